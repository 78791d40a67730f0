"""trio-election beside etcd: one run, one load generator, the same workloads.

Run it as ``just bench`` (a few minutes) or ``just bench --quick`` (about a
minute); ``python -m tools.bench --help`` from the repository lists the options.

One node of each system, then three of each (etcd from Debian's ``etcd-server``
package, found on PATH; without it the bench says how to install it and
measures our half alone). All on loopback, with data dirs under one temporary
folder, everything started stopped at the end, also on Ctrl-C. Modules:

* ``processes``: the child processes, their CPU and memory;
* ``systems``: how each system is started and driven (its docstring has the
  table of which call does which operation in each system);
* ``load``: the workloads and phases, the same code for both systems;
* ``single``, ``cluster``: what is measured on one node and on three;
* ``report``: the tables, the targets, the PNG charts.

Nothing here asserts a speed: the figures are a measurement on the machine it
runs on, where the load generator (this one Python process) shares the CPUs
with the servers.
"""
