"""Crash anywhere: the dev host SIGKILLed at random moments, 20+ times over 500 files, restarted each time."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from shared.models import InputState
from tests.chaos.harness import MANIFEST, RESULTS, ChaosStack, Tally, input_content, pipeline, record, verify

pytestmark = pytest.mark.chaos
INPUTS = 500
WAVES = 25
WAVE_SECONDS = 2.5
MIN_KILLS = 20
MAX_KILLS = 26
SEED = int(os.environ.get("CHAOS_SEED", "20261124"))


@pytest.mark.timeout(900)
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    chaos_dir: Path, stacks: list[ChaosStack]
) -> None:
    rng = random.Random(SEED)  # noqa: S311 - crash timing, not security
    stack = ChaosStack(chaos_dir, [pipeline("crash")])
    stacks.append(stack.start())
    gw = stack.gateways()
    results = stack.blob_service().get_container_client(RESULTS)
    names = [f"crash/{index:04d}.txt" for index in range(INPUTS)]
    waves = [names[start::WAVES] for start in range(WAVES)]
    began = time.monotonic()

    def drop_in_waves() -> None:
        for wave in waves:
            stack.drop({name: input_content(name) for name in wave}, workers=8)
            time.sleep(WAVE_SECONDS)

    dropper = threading.Thread(target=drop_in_waves, daemon=True)
    dropper.start()

    kills = 0
    killed_during: Counter[str] = Counter()
    claimed_at_kill: list[int] = []
    half_published_at_kill: list[int] = []
    while kills < MIN_KILLS or (dropper.is_alive() and kills < MAX_KILLS):
        time.sleep(rng.uniform(0.3, 4.0))
        in_flight = stack.kill_host()
        kills += 1
        killed_during.update(set(in_flight) or {"(between invocations)"})
        # What the crash left behind: ledger rows claimed without a confirmed task, result folders
        # holding copied outputs but no manifest yet.
        claimed_at_kill.append(len(gw.ledger.inputs(InputState.CLAIMED)))
        folders: dict[str, set[str]] = {}
        for blob in results.list_blobs():
            folder, _, leaf = blob.name.rpartition("/")
            folders.setdefault(folder.split("/_logs")[0], set()).add(leaf)
        half_published_at_kill.append(sum(1 for leaves in folders.values() if MANIFEST not in leaves))
        stack.start_host()
    dropper.join()

    missing = stack.wait_for_manifests(names, timeout=420)
    verdict = verify(stack, names)
    seconds = time.monotonic() - began
    evidence = (
        f"seed {SEED}; kills while running {dict(killed_during)}; kills that left claimed-but-unsubmitted rows "
        f"{sum(1 for n in claimed_at_kill if n)} (max {max(claimed_at_kill)}); kills that left outputs without "
        f"a manifest {sum(1 for n in half_published_at_kill if n)} (max {max(half_published_at_kill)}); "
        f"host starts {stack.host_starts}"
    )
    record(Tally.of("crash anywhere", "dev host SIGKILL at random moments, restarted", kills, verdict, seconds,
                    notes=evidence))  # fmt: skip

    assert kills >= MIN_KILLS
    assert not missing, f"{len(missing)} inputs without a manifest, e.g. {sorted(missing)[:10]}"
    assert verdict.lost == []
    assert verdict.misfiled == [], verdict.misfiled[:10]
    assert verdict.duplicate_tasks == 0 and verdict.stray_tasks == 0
    assert verdict.duplicate_manifests == 0
    assert verdict.succeeded == INPUTS
