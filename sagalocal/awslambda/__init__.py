"""Lambda for the embedded stack: each function a template process, sandboxes forked from it on demand.

  sandbox.py   the processes: the template (the handler imported once) and the sandboxes it forks
  runtime.py   one function's sandboxes: scaling, throttling, timeouts measured in the handler's own time
  service.py   functions by name and ARN, for moto's Lambda API, the Step Functions interpreter and the API
"""
