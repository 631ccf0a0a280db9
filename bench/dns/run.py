"""DNS benchmark: dnsperf against meshagent's responder and against dnsmasq serving the same records.

Same run, same machine, same query files; prints queries/s and latency for each and the ratio.
Then the large-answer case: uncached EDNS SRV queries for 1,000 instances vs 3 (issue 11).
Usage: .venv/bin/python bench/dns/run.py [--seconds 10] [--clients 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import dns.message
import dns.query

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))  # tests.support, shared with the tests
from big import loop_time, over_the_wire  # noqa: E402  (bench/dns/big.py)
from machine import cpu_model  # noqa: E402  (bench/machine.py, shared by the bench scripts)

from tests.support.wait import wait_for  # noqa: E402

HOST = "127.0.0.201"
OURS_PORT, DNSMASQ_PORT = 18600, 18601


def machine() -> str:
    model = cpu_model("unknown CPU")
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, {platform.system()}"


def wait_answer(port: int, timeout: float = 15.0) -> None:
    def answered() -> bool:
        reply = dns.query.udp(dns.message.make_query("db.service.mesh", "A"), HOST, port=port, timeout=0.5)
        return bool(reply.answer)
    try:
        wait_for(answered, timeout, 0.1, f"db.service.mesh from {HOST}:{port}")
    except AssertionError:
        raise SystemExit(f"server on {HOST}:{port} did not answer db.service.mesh within {timeout}s") from None


def dnsperf(port: int, qfile: Path, seconds: int, clients: int) -> tuple[float, float]:
    out = subprocess.run(["dnsperf", "-s", HOST, "-p", str(port), "-d", str(qfile), "-l", str(seconds),
                          "-c", str(clients), "-T", "1", "-q", "200"], capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    if lost and int(lost.group(1)):
        print(f"  (note: {lost.group(1)} queries lost on port {port})")
    return qps, lat * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    for tool in ("dnsperf",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install -y dnsperf dnsmasq-base (or `make system-deps`)")
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(dnsmasq).exists():
        raise SystemExit("dnsmasq is missing: apt-get install -y dnsmasq-base")
    work = Path(tempfile.mkdtemp(prefix="meshagent-dnsbench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ours = subprocess.Popen([sys.executable, str(HERE / "serve.py"), HOST, str(OURS_PORT), "1000"],
                                stdout=subprocess.DEVNULL, stderr=open(work / "ours.log", "wb"))
        procs.append(ours)
        hosts = "".join(f"--host-record=db.service.mesh,10.0.0.{i + 1}\n" for i in range(3))
        srvs = "".join(f"--srv-host=db.service.mesh,db{i}.node.dc1.mesh,5432,1,1\n" for i in range(3))
        conf = work / "dnsmasq.conf"
        conf.write_text((hosts + srvs).replace("--", ""))
        theirs = subprocess.Popen([dnsmasq, "--no-daemon", "--no-resolv", "--no-hosts", "--no-poll",
                                   f"--port={DNSMASQ_PORT}", f"--listen-address={HOST}", "--bind-interfaces",
                                   "--cache-size=1000", f"--conf-file={conf}", "--user=root", "--pid-file="],
                                  stdout=subprocess.DEVNULL, stderr=open(work / "dnsmasq.log", "wb"))
        procs.append(theirs)
        wait_answer(OURS_PORT)
        wait_answer(DNSMASQ_PORT)
        results = {}
        for qtype in ("A", "SRV"):
            qfile = work / f"q-{qtype}.txt"
            qfile.write_text(f"db.service.mesh {qtype}\n")
            for name, port in (("meshagent", OURS_PORT), ("dnsmasq", DNSMASQ_PORT)):
                results[(qtype, name)] = dnsperf(port, qfile, args.seconds, args.clients)
        print(f"\nDNS benchmark: dnsperf -l {args.seconds} -c {args.clients} -q 200 on {HOST}")
        print(f"machine: {machine()}\n")
        print(f"{'query':<22}{'server':<12}{'queries/s':>12}{'avg latency':>14}{'vs dnsmasq':>12}")
        for qtype in ("A", "SRV"):
            ref = results[(qtype, "dnsmasq")][0]
            for name in ("meshagent", "dnsmasq"):
                qps, lat = results[(qtype, name)]
                print(f"{'db.service.mesh ' + qtype:<22}{name:<12}{qps:>12,.0f}{lat:>11.3f} ms{qps / ref:>11.2f}x")
        print("\nlarge answers (meshagent, same server process; 1,000 instances of web):")
        for line in over_the_wire(HOST, OURS_PORT) + loop_time():
            print(line)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
