# trio-election tasks. `just --list` shows them.
# Uses .venv/bin/python when a .venv exists, else python3 from PATH.

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python3" }

# Run the whole test suite (lint, generated-code check, tests).
test *ARGS:
    {{python}} -m ruff check trio_election tests tools examples
    {{python}} -m pytest {{ARGS}}

# Three clients contend for one election as things fail; read it as a story.
demo:
    {{python}} tools/demo.py

# A larger sweep of the seeded simulations: just simulate --seeds 1000
simulate *ARGS:
    {{python}} tools/simulate.py {{ARGS}}

# trio-election beside etcd (if installed), one node and three: just bench [--quick] [--json F] [--charts DIR]
bench *ARGS:
    {{python}} -m tools.bench {{ARGS}}

# One node with 200,000 elections and 2,000 watchers: its memory, and other clients' latency
bench-crowd *ARGS:
    {{python}} -m tools.bench.crowd {{ARGS}}

# Real nodes under faults (kills, pauses, partitions, membership changes), checked: just chaos --nodes 5 --duration 600
chaos *ARGS:
    {{python}} -m tools.chaos {{ARGS}}

# Attack one node with HTTP/2 abuse (rapid reset, floods, idle streams) and measure it.
abuse *ARGS:
    {{python}} tools/abuse.py {{ARGS}}

# Regenerate trio_election/_generated from proto/.
gen-proto:
    {{python}} tools/gen_proto.py

# Fail if trio_election/_generated drifts from proto/.
check-proto:
    {{python}} tools/gen_proto.py --check

# Format and fix what ruff can.
fmt:
    {{python}} -m ruff format trio_election tests tools examples
    {{python}} -m ruff check --fix trio_election tests tools examples

# Run one node in the foreground (in memory, port 50051).
node *ARGS:
    {{python}} -m trio_election node {{ARGS}}
