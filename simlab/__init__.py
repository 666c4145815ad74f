"""Labs that wire the agent (`pve_balancer`) to the simulator (`pvesim`).

Neither package may import the other, so the code that joins them lives
here, used by `tests/` and `bench/`. Not shipped: the Debian package and the
wheel contain `pve_balancer` only (pyproject.toml's package find, checked in
debian/rules).

- `simlab.inprocess`: one simulator and the real agent in one process, in
  virtual time (scenario tests, benchmarks).
"""
