"""`eventlab demo`: the main job, end to end, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_demo_json_reports_every_saga_and_the_invariants(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventlab",
            "demo",
            "--orders",
            "60",
            "--payment-failure-rate",
            "0.3",
            "--seed",
            "3",
            "--json",
            "--data-dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["orders"] == 60 and report["stuck"] == 0
    assert report["completed"] + report["cancelled"] == 60
    assert report["cancelled_by_reason"].get("payment_failed", 0) > 0
    assert sum(report["cancelled_by_reason"].values()) == report["cancelled"]
    assert report["events"] >= 60 * 5
    assert report["saga_latency_ms"]["p50"] > 0 and report["saga_latency_ms"]["p99"] >= report["saga_latency_ms"]["p50"]
    assert report["invariants"] == {
        "no_oversell": True,
        "stock_conserved": True,
        "no_double_charge": True,
        "failed_payments_compensated": True,
        "all_events_published": True,
    }
    assert "terminal 60/60" in result.stderr  # progress output


def test_demo_runs_again_on_the_same_data_dir(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTLAB_")}
    command = [sys.executable, "-m", "eventlab", "demo", "--orders", "10", "--json", "--data-dir", str(tmp_path)]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["stuck"] == 0
