"""The emulator's documented local account.

Like Azurite's `devstoreaccount1` key, DEV_ACCOUNT_KEY is public and protects nothing: it exists so
that the real SDK's SharedKey signing is exercised end to end. Never use it for a real account.
"""

from __future__ import annotations

DEV_ACCOUNT_NAME = "devbatch"
DEV_ACCOUNT_KEY = "cdQ1HYvgeAclz19/5r2BwH8HjdQxR4ixQh2RAMBcORmc9vsWs/DEZZzfyTWLBp+SmiGBFjJdBBGr6W2NP86POw=="
