"""Fault injection for the saga's tests: one rule format, applied where AWS fails.

A rule says what fails (an invocation, or a DynamoDB request), how (the actions, named after AWS
FIS's Lambda fault actions and DynamoDB's own error codes), for what (a function, an order, a table,
an operation, a key pattern) and how often (a count, a probability). Two places apply the same rules:

  * `sagafaults.handler`: a wrapper around a Lambda handler, turned on only by the template parameter
    FaultInjection (it reads its rules from the fault rules table). It works on any deployed stack.
  * the embedded stack's DynamoDB process (sagalocal), which applies DynamoDB rules to every client.

No saga code knows about faults: with FaultInjection off, this package is never imported.
"""
