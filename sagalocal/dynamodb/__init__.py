"""DynamoDB for the embedded stack: moto's backend in a process of its own, behaving as DynamoDB does under load.

  server.py       the HTTP endpoint (AWS JSON 1.0 over HTTP/1.1 keep-alive) and the control endpoints
  engine.py       request dispatch into moto's backend, with fast paths for the data-plane operations
  concurrency.py  how concurrent requests interact: transaction conflicts, idempotency tokens
  capacity.py     what each request would cost on AWS (read and write request units), and request counts
  faults.py       the fault rules this process applies to every client (sagafaults rules)

docs/dynamodb-emulation.md says which DynamoDB concurrency behaviours are emulated and which are not.
"""
