"""A deterministic simulation of the saga: one process, the real handlers, the real state machine definition run
by the embedded stack's own ASL interpreter (moto's), DynamoDB (moto's backend) and the payment gateway in
memory, and a virtual clock. See sagalocal/sim/world.py and docs/simulation.md."""
