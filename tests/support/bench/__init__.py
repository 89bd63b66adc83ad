"""`scripts/bench`: Realize against nfs-ganesha on loopback, same data, same clients.

- `cli`: arguments, installing the Debian packages, the private network namespace.
- `run`: the data, the two servers, the rounds of workloads, the machine's ceilings, RSS.
- `client`: one client process (`python -m tests.support.bench.client JOB`), the package's
  own RPC client (`nfsd.rpc.client`), or a blocking socket for the NULL ceiling and the
  metadata walk, driving one workload against one server.
- `report`: results.md, results.png and results.json.
"""
