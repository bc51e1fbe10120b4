"""Write a deployed stack's Outputs as JSON, and the URL LocalStack serves its REST API at.

  python scripts/localstack_outputs.py --stack-name order-saga --out stack-outputs.json

Reads `cloudformation describe-stacks` at AWS_ENDPOINT_URL (default http://localhost:4566) and writes
{OutputKey: OutputValue} to --out. The API's ApiUrl output is the AWS form
(https://<id>.execute-api...), which LocalStack does not serve; the URL to test is
  <endpoint>/restapis/<api id>/<stage>/_user_request_
with the api id the stack's OrdersApi (checked against `apigateway get-rest-apis`). When GITHUB_ENV is
set (GitHub Actions), SAGA_API_URL, SAGA_AWS_ENDPOINT and SAGA_STACK_OUTPUTS are appended to it, the
variables tests/stack/conftest.py reads to target this stack.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import boto3

DEFAULT_ENDPOINT = "http://localhost:4566"


def stack_outputs(cfn: Any, stack_name: str) -> dict[str, str]:
    stacks = cfn.describe_stacks(StackName=stack_name)["Stacks"]
    if not stacks:
        raise LookupError(f"no stack named {stack_name}")
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def rest_api_id(cfn: Any, apigw: Any, stack_name: str, logical_id: str, outputs: dict[str, str]) -> str:
    """The stack's REST API id: its physical id, else the id in ApiUrl, else the one API named after the stack."""
    apis = {api["id"]: api.get("name", "") for api in _all_rest_apis(apigw)}
    candidates = []
    try:
        detail = cfn.describe_stack_resource(StackName=stack_name, LogicalResourceId=logical_id)
        candidates.append(detail["StackResourceDetail"]["PhysicalResourceId"])
    except Exception as exc:  # noqa: BLE001 - fall back to the outputs and the API list
        print(f"note: no resource {logical_id} in {stack_name} ({exc}); trying ApiUrl", file=sys.stderr)
    found = re.match(r"https?://([^.]+)\.execute-api\.", outputs.get("ApiUrl", ""))
    if found:
        candidates.append(found.group(1))
    for candidate in candidates:
        if candidate in apis:
            return candidate
    named = [api_id for api_id, name in apis.items() if name == stack_name]
    if len(named) == 1:
        return named[0]
    raise LookupError(f"cannot tell the stack's REST API among {apis} (tried {candidates})")


def _all_rest_apis(apigw: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"limit": 500}
    while True:
        page = apigw.get_rest_apis(**kwargs)
        items.extend(page.get("items", []))
        if not page.get("position"):
            return items
        kwargs["position"] = page["position"]


def stage_of(outputs: dict[str, str], default: str) -> str:
    """The stage is the last path segment of ApiUrl (https://<id>.execute-api.<region>.amazonaws.com/<stage>)."""
    found = re.match(r"https?://[^/]+/([^/]+)/?$", outputs.get("ApiUrl", ""))
    return found.group(1) if found else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack-name", default="order-saga")
    parser.add_argument("--out", type=Path, default=Path("stack-outputs.json"), help="where the outputs JSON goes")
    parser.add_argument("--api", default="OrdersApi", help="the REST API's logical id in the template")
    parser.add_argument("--stage", default="dev", help="the API stage when ApiUrl does not say (default dev)")
    parser.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL") or DEFAULT_ENDPOINT)
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    args = parser.parse_args(argv)

    endpoint = args.endpoint.rstrip("/")
    session = boto3.Session(region_name=args.region)
    cfn = session.client("cloudformation", endpoint_url=endpoint)
    apigw = session.client("apigateway", endpoint_url=endpoint)
    try:
        outputs = stack_outputs(cfn, args.stack_name)
        api_id = rest_api_id(cfn, apigw, args.stack_name, args.api, outputs)
    except Exception as exc:  # noqa: BLE001 - one clear line for the CI log
        print(f"error: {exc}", file=sys.stderr)
        return 1
    api_url = f"{endpoint}/restapis/{api_id}/{stage_of(outputs, args.stage)}/_user_request_"
    args.out.write_text(json.dumps(outputs, indent=2, sort_keys=True) + "\n")
    print(f"{len(outputs)} outputs of {args.stack_name} written to {args.out}")
    print(f"SAGA_API_URL={api_url}")
    github_env = os.environ.get("GITHUB_ENV")
    if github_env:
        with open(github_env, "a", encoding="utf-8") as env:
            env.write(f"SAGA_API_URL={api_url}\n")
            env.write(f"SAGA_AWS_ENDPOINT={endpoint}\n")
            env.write(f"SAGA_STACK_OUTPUTS={args.out.resolve()}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
