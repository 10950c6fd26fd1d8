"""Limits on how long a task's SAS URLs may live."""

from pathlib import Path

import pytest

from shared.errors import ConfigError
from tests.unit.fakes import make_settings


def test_sas_lifetime_stays_within_what_a_user_delegation_key_covers(tmp_path: Path) -> None:
    # Azure issues a user delegation key for at most 7 days; batchdrop's key outlives the SAS by an hour.
    assert make_settings(tmp_path, BATCHDROP_SAS_MAX_HOURS=166).sas_max_hours == 166
    with pytest.raises(ConfigError, match="BATCHDROP_SAS_MAX_HOURS: Input should be less than or equal to 166"):
        make_settings(tmp_path, BATCHDROP_SAS_MAX_HOURS=24 * 7)
