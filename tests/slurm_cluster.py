"""A real one-node SLURM cluster on localhost, in a temporary folder (issue 21), for tests/test_slurm_cluster.py.

Debian's packages (``slurmctld slurmd slurm-client munge slurmdbd mariadb-server``), started as
root in about 10 s: munged (as the ``munge`` user, its own key and socket), MariaDB and slurmdbd
(accounting: submitit asks ``sacct`` for job states), slurmctld and slurmd (this machine's CPUs and
memory as ``slurmd -C`` reports them). Every daemon runs in the foreground as a child of this
process, with its files, ports and logs in the folder; nothing under /etc or /run is touched, so a
site's own SLURM or munge on the machine is left alone. Client commands find the cluster through
``SLURM_CONF`` (:meth:`Cluster.env`), munge through ``AuthInfo=socket=...`` in that file.

Settings learnt by starting one here: ``DefMemPerCPU`` (without it a task takes the node's memory
and tasks run one at a time), ``ProctrackType=proctrack/linuxproc`` (no cgroups needed),
``TaskPlugin=task/affinity`` (a task is bound to its CPUs), ``ReturnToService=2``.
``accounting=False`` starts it with ``AccountingStorageType=accounting_storage/none``: no MariaDB,
no slurmdbd, and ``sacct`` fails, as on a site without accounting.

    python tests/slurm_cluster.py install          # apt-get the packages if one is missing (root)
    python tests/slurm_cluster.py start [--no-accounting]   # prints the folder and SLURM_CONF; Ctrl-C stops it
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
# the commands each package brings; a package counts as installed when its commands are found
COMMANDS = {"slurmctld": "slurmctld", "slurmd": "slurmd", "slurm-client": "sbatch", "munge": "munged",
            "slurmdbd": "slurmdbd", "mariadb-server": "mariadbd"}
SBIN = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
CLUSTER_NAME = "ltbench"
PARTITION = "debug"


def which(command: str) -> str | None:
    return shutil.which(command) or shutil.which(command, path=os.pathsep.join(SBIN))


def missing_packages() -> list[str]:
    return [p for p in PACKAGES if which(COMMANDS[p]) is None]


def cannot_run() -> str | None:
    """Why this machine cannot start the cluster (None: it can, perhaps after :func:`install`)."""
    if sys.platform != "linux":
        return f"a SLURM cluster needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "starting a SLURM cluster needs root (munged runs as the munge user, slurmd as root)"
    if missing_packages() and which("apt-get") is None:
        return f"missing {', '.join(missing_packages())} and no apt-get to install them"
    return None


def install(echo=print) -> float:
    """apt-get the packages that are missing (root); the seconds it took (0 when none was missing)."""
    missing = missing_packages()
    if not missing:
        return 0.0
    start = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    echo(f"slurm_cluster: apt-get install {' '.join(PACKAGES)} (missing: {', '.join(missing)})")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    still = missing_packages()
    if still:
        raise RuntimeError(f"apt-get installed the packages but {', '.join(still)} is still missing")
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_line() -> str:
    """This machine as slurmd sees it (``NodeName=... CPUs=... RealMemory=...``), without its name."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = out.splitlines()[0].split()
    return " ".join(f for f in fields if not f.startswith("NodeName="))


class Cluster:
    """One cluster: ``start()`` (returns once the node is idle), ``env()`` for clients, ``stop()``."""

    def __init__(self, accounting: bool = True, root: Path | None = None, def_mem_per_cpu_mb: int = 1024) -> None:
        self.accounting = accounting
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="ltbench-slurm-"))
        self.def_mem = def_mem_per_cpu_mb
        self.procs: dict[str, subprocess.Popen] = {}
        self.node = "ltbench-node"
        self.conf = self.root / "etc" / "slurm.conf"
        self.start_seconds: float | None = None

    # ---------------------------------------------------------------------------- clients
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A client command (squeue, scontrol, sacct, scancel, sacctmgr) against this cluster."""
        return subprocess.run([which(args[0]), *args[1:]], capture_output=True, text=True, check=check,
                              timeout=timeout, env={**os.environ, **self.env()})

    def log(self, name: str) -> str:
        path = self.root / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---------------------------------------------------------------------------- start
    def start(self) -> "Cluster":
        reason = cannot_run()
        if reason:
            raise RuntimeError(reason)
        if missing_packages():
            raise RuntimeError(f"missing {', '.join(missing_packages())}: python tests/slurm_cluster.py install")
        t0 = time.monotonic()
        for sub in ("etc", "log", "state", "spool", "munge", "mysql"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munge and mysql traverse it
        try:
            self._munge()
            if self.accounting:
                self._mariadb()
                self._slurmdbd()
            self._slurm()
        except BaseException:
            self.stop(keep=True)  # its logs tell why
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _spawn(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **self.env()}, **kwargs)
        log.close()
        self.procs[name] = proc
        return proc

    def _wait(self, what: str, ready, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited (code {proc.returncode}) while waiting for {what}: "
                                       f"{self._tail(name)}")
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")

    def _tail(self, name: str) -> str:
        text = ""
        for path in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if path.exists():
                text += path.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-5:])

    def _munge(self) -> None:
        folder = self.root / "munge"
        key = folder / "munge.key"
        subprocess.run([which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        shutil.chown(folder, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        os.chmod(folder, 0o755)  # clients (slurm, root) reach the socket
        os.chmod(key, 0o600)
        self.socket = folder / "munge.socket"
        self._spawn("munged", [which("munged"), "--foreground", f"--key-file={key}", f"--socket={self.socket}",
                               f"--pid-file={folder / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                               f"--seed-file={folder / 'munged.seed'}"], user="munge", group="munge",
                    extra_groups=[])
        self._wait("munged's socket", self.socket.exists)

    def _mariadb(self) -> None:
        folder = self.root / "mysql"
        data = folder / "data"
        data.mkdir()
        shutil.chown(folder, "mysql", "mysql")
        shutil.chown(data, "mysql", "mysql")
        subprocess.run([which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=mysql",
                        "--auth-root-authentication-method=socket", "--skip-test-db"], check=True,
                       capture_output=True)
        self.db_port, self.db_password = free_port(), os.urandom(8).hex()
        init = folder / "init.sql"
        init.write_text(f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self.db_password}';\n"
                        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n")
        shutil.chown(init, "mysql", "mysql")
        self._spawn("mariadb", [which("mariadbd"), "--no-defaults", f"--datadir={data}", "--user=mysql",
                                f"--socket={folder / 'mysqld.sock'}", f"--port={self.db_port}",
                                "--bind-address=127.0.0.1", "--skip-name-resolve", f"--init-file={init}",
                                f"--pid-file={folder / 'mysqld.pid'}",
                                f"--log-error={self.root / 'log' / 'mariadb.log'}",
                                "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0",
                                # slurmdbd's schema wants these (its own warning otherwise)
                                "--innodb-lock-wait-timeout=900", "--max-allowed-packet=16M"])
        self._wait("MariaDB's port", lambda: _listening(self.db_port))

    def _slurmdbd(self) -> None:
        self.dbd_port = free_port()
        conf = self.root / "etc" / "slurmdbd.conf"
        conf.write_text("\n".join([
            "AuthType=auth/munge", f"AuthInfo=socket={self.socket}", "DbdHost=localhost", "DbdAddr=127.0.0.1",
            f"DbdPort={self.dbd_port}", "SlurmUser=root", f"PidFile={self.root / 'state' / 'slurmdbd.pid'}",
            f"LogFile={self.root / 'log' / 'slurmdbd.log'}", "DebugLevel=info",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={self.db_port}",
            "StorageUser=slurm", f"StoragePass={self.db_password}", "StorageLoc=slurm_acct_db", ""]))
        os.chmod(conf, 0o600)  # slurmdbd refuses a config others can read (it holds the password)
        self._write_slurm_conf()  # slurmdbd finds its file beside SLURM_CONF
        self._spawn("slurmdbd", [which("slurmdbd"), "-D"])
        self._wait("slurmdbd's port", lambda: _listening(self.dbd_port))
        # the cluster's row in the database (slurmctld registers with it)
        added = self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME, check=False)
        if added.returncode != 0:
            raise RuntimeError(f"sacctmgr add cluster: {added.stdout.strip()} {added.stderr.strip()}")

    def _write_slurm_conf(self) -> None:
        if getattr(self, "ctld_port", None) is None:
            self.ctld_port, self.slurmd_port = free_port(), free_port()
        host = socket.gethostname().split(".")[0]
        lines = [
            f"ClusterName={CLUSTER_NAME}", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root", "SlurmdUser=root",
            f"SlurmctldPort={self.ctld_port}", f"SlurmdPort={self.slurmd_port}",
            # cred_expire: a requeued job waits this long before it may start again (default 120 s)
            "AuthType=auth/munge", f"AuthInfo=socket={self.socket},cred_expire=10", "CredType=cred/munge",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'state' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'spool' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}", "SlurmctldDebug=info", "SlurmdDebug=info",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/affinity", "ReturnToService=2",
            "MpiDefault=none", "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory", f"DefMemPerCPU={self.def_mem}",
            # KillWait: seconds from scancel's SIGTERM (which submitit ignores) to SIGKILL; 30 on real sites
            "SchedulerParameters=sched_interval=2", "MessageTimeout=20", "KillWait=2", "MinJobAge=300",
            "JobCompType=jobcomp/none", "JobAcctGatherType=jobacct_gather/none",
        ]
        if self.accounting:
            # AccountingStoragePass: the munge socket of connections to slurmdbd (slurm.conf(5))
            lines += ["AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
                      f"AccountingStoragePort={self.dbd_port}", f"AccountingStoragePass={self.socket}"]
        else:
            lines += ["AccountingStorageType=accounting_storage/none"]
        lines += [f"NodeName={self.node} NodeHostname={host} NodeAddr=127.0.0.1 {node_line()} State=UNKNOWN",
                  f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]
        self.conf.write_text("\n".join(lines))

    def _slurm(self) -> None:
        self._write_slurm_conf()
        self._spawn("slurmctld", [which("slurmctld"), "-D", "-i"])
        self._wait("slurmctld", lambda: self.run("scontrol", "ping", check=False, timeout=10).returncode == 0)
        self._spawn("slurmd", [which("slurmd"), "-D", "-N", self.node])

        def idle() -> bool:
            out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).stdout.strip()
            return out == "idle"

        self._wait("the node to be idle", idle)

    # ---------------------------------------------------------------------------- stop
    def stop(self, keep: bool = False) -> None:
        """Cancel every job, stop the daemons (newest first), remove the folder (``keep``: leave it)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", f"--partition={PARTITION}", check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                out = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.3)
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.procs.clear()
        if not keep:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(keep=bool(os.environ.get("LTBENCH_SLURM_KEEP")))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------ the pytest fixture


def _fail_or_skip(reason: str):
    import pytest

    if os.environ.get("CI", "").lower() == "true":  # CI must run it: .ci/run installs the packages
        pytest.fail(f"CI=true but the SLURM cluster cannot run: {reason}")
    pytest.skip(reason)


def _clusters():
    """Session fixture body: ``slurm_clusters(accounting=True)`` -> a started :class:`Cluster`.
    At most one runs at a time (asking for the other kind stops the current one); all stop at the end."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        _fail_or_skip("submitit is not installed (pip install 'ltbench[slurm]')")
    reason = cannot_run()
    if reason:
        _fail_or_skip(reason)
    if missing_packages():
        if os.environ.get("CI", "").lower() != "true":  # never apt-get on a developer's machine unasked
            _fail_or_skip(f"missing {', '.join(missing_packages())}: `sudo python tests/slurm_cluster.py install` "
                          "installs them (CI does it in .ci/run)")
        install()
    current: dict[bool, Cluster] = {}

    def get(accounting: bool = True) -> Cluster:
        if accounting not in current:
            for other in list(current.values()):
                other.stop(keep=bool(os.environ.get("LTBENCH_SLURM_KEEP")))
            current.clear()
            cluster = Cluster(accounting=accounting)
            try:
                cluster.start()
            except Exception as exc:
                _fail_or_skip(f"the SLURM cluster did not start: {exc} (logs: {cluster.root / 'log'})")
            print(f"slurm_cluster: started in {cluster.start_seconds:.1f} s (accounting {accounting}) in "
                  f"{cluster.root}")
            current[accounting] = cluster
        return current[accounting]

    yield get
    for cluster in current.values():
        cluster.stop(keep=bool(os.environ.get("LTBENCH_SLURM_KEEP")))


def main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        reason = cannot_run()
        if reason:  # fatal in CI, where the test must run; elsewhere the test skips with this reason
            print(f"slurm_cluster: cannot install: {reason}", file=sys.stderr)
            return 1 if os.environ.get("CI", "").lower() == "true" else 0
        seconds = install()
        print(f"slurm_cluster: packages present ({seconds:.1f} s to install)")
        return 0
    if argv[:1] == ["start"]:
        def interrupt(signum, frame):
            raise KeyboardInterrupt

        for signum in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
            signal.signal(signum, interrupt)
        cluster = Cluster(accounting="--no-accounting" not in argv)
        cluster.start()
        print(f"slurm_cluster: started in {cluster.start_seconds:.1f} s in {cluster.root}; "
              f"export SLURM_CONF={cluster.conf}; Ctrl-C stops it", flush=True)
        try:
            while all(p.poll() is None for p in cluster.procs.values()):
                time.sleep(1)
            print("slurm_cluster: a daemon exited; stopping", file=sys.stderr)
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
        return 0
    print("usage: python tests/slurm_cluster.py install | start [--no-accounting]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
