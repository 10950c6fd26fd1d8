"""Settings that bound what a leaked value can do: SAS lifetimes, and keys kept out of reprs."""

from pathlib import Path

import pytest

from shared.errors import ConfigError
from tests.unit.fakes import make_settings


def test_sas_lifetime_stays_within_what_a_user_delegation_key_covers(tmp_path: Path) -> None:
    # Azure issues a user delegation key for at most 7 days; batchdrop's key outlives the SAS by an hour.
    assert make_settings(tmp_path, BATCHDROP_SAS_MAX_HOURS=166).sas_max_hours == 166
    with pytest.raises(ConfigError, match="BATCHDROP_SAS_MAX_HOURS: Input should be less than or equal to 166"):
        make_settings(tmp_path, BATCHDROP_SAS_MAX_HOURS=24 * 7)


def test_keys_never_appear_in_the_settings_repr(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        BatchdropStorage="DefaultEndpointsProtocol=https;AccountName=ours;AccountKey=c3RvcmFnZQ==",
        BATCHDROP_BATCH_ACCOUNT_NAME="batch",
        BATCHDROP_BATCH_ACCOUNT_KEY="YmF0Y2g=",
    )
    assert settings.storage_connection_string and settings.batch_account_key  # still usable
    for text in (repr(settings), str(settings)):
        assert "c3RvcmFnZQ==" not in text and "YmF0Y2g=" not in text
