"""HyperQueue running N tasks of `true` (one real process each) on a local cluster: the HQ server
and workers that the `hyperqueue` Python package embeds (the same Rust server and worker as the
`hq` binary, started in-process), with W workers of C cores each.

    python hq_local.py N W C
Prints: tasks, seconds to start the cluster, to build+submit the job, to run it, and tasks/s.
"""
import os
import sys
import tempfile
import time

from hyperqueue import Job
from hyperqueue.cluster import LocalCluster, WorkerConfig

n, workers, cores = (int(a) for a in sys.argv[1:4])
with tempfile.TemporaryDirectory() as tmp:
    os.chdir(tmp)
    # The embedded workers make their directories under TMPDIR: keep them in here.
    os.environ["TMPDIR"] = tmp
    t0 = time.perf_counter()
    cluster = LocalCluster(server_dir=os.path.join(tmp, "server"))
    for _ in range(workers):
        cluster.start_worker(WorkerConfig(cores=cores))
    client = cluster.client()
    t1 = time.perf_counter()
    job = Job()
    for _ in range(n):
        # Logs are kept as files, as plateflow keeps each task's stdout and stderr as blobs.
        job.program(["true"])
    submitted = client.submit(job)
    t2 = time.perf_counter()
    client.wait_for_jobs([submitted])
    t3 = time.perf_counter()
    cluster.stop()
    print(f"tasks={n} workers={workers} cores/worker={cores} start_s={t1 - t0:.3f} "
          f"submit_s={t2 - t1:.3f} run_s={t3 - t2:.3f} total_s={t3 - t0:.3f} "
          f"tasks/s_run={n / (t3 - t2):.0f} tasks/s_submit+run={n / (t3 - t1):.0f}")
