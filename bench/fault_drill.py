"""The fault drill, longer: `.venv/bin/python -m bench.fault_drill [--operations 200] [--seed N]`.

One node with two loop pool disks; the agent and the controller are killed at random moments, the API server is
restarted once; prints operations, kills, verified volumes, and that nothing leaked.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import grpc

from tests.harness.apiserver import ApiServer
from tests.harness.disks import LoopDisks, partitions
from tests.harness.drill import run_drill
from tests.harness.driver import Driver
from tests.harness.tools import tools

NODE = "drill-node"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--operations", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with ApiServer(tools()) as api, LoopDisks() as disks:
        api.start()
        api.install_driver_objects()
        api.add_node(NODE)
        pool = [disks.pool("ssd", 2048), disks.pool("ssd", 2048)]
        workdir = Path(tempfile.mkdtemp(prefix="dlpv-drill-"))
        driver = Driver(api, workdir)
        try:
            ctl = driver.controller(LEASE_SECONDS="4")
            ctl.wait_ready()
            agent = driver.agent(NODE, [d.device for d in pool])
            agent.wait_ready()
            report, _ = run_drill(
                api,
                [agent, ctl],
                lambda: grpc.insecure_channel(f"unix://{ctl.socket}"),
                lambda: grpc.insecure_channel(f"unix://{agent.socket}"),
                workdir,
                args.operations,
                args.seed,
            )
            leaked = sum(len(partitions(d.device)) - 1 for d in pool)
            stuck = json.loads(api.kubectl("get", "devicevolumes", "-n", "openebs", "-o", "json"))["items"]
            print(
                f"{report.operations} create/publish/write/unpublish operations in {report.seconds:.0f} s; "
                f"kills {report.kills}; API server restarts {report.apiserver_restarts}"
            )
            print(
                f"verified checksums of {report.verified} volumes; leaked partitions {leaked}; "
                f"DeviceVolumes left {len(stuck)}"
            )
        finally:
            driver.stop()


if __name__ == "__main__":
    main()
