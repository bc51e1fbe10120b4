"""A local web console for a stack, like the AWS Step Functions console, on 127.0.0.1.

  data.py       what it reads, through the Step Functions, DynamoDB and SQS APIs only, and the one thing it
                changes: RedriveExecution of a parked saga's execution (the Parked page's button)
  execution.py  an execution's history read as state visits, attempts, inputs, outputs and errors
  graph.py      the state machine's graph from its definition, and an execution's path over it
  redact.py     what it never shows (card tokens)
  server.py     the pages (Jinja templates in templates/), refreshed with htmx, and their assets
  static/       the page script (dagre lays the graph out) and style
  package.json  the browser libraries, pinned by package-lock.json and installed by `make` (npm ci)

`sagalocal up` serves it for the embedded stack; `sagalocal console` serves it for any endpoint.
"""
