"""A state machine's graph, generated from its ASL definition, and an execution's path drawn over it.

Each state gets a role from the definition's shape alone, so nothing is drawn or classified by hand:
  forward        on the chain StartAt reaches through Next, Default and Choice edges (the happy path)
  compensation   a Task or Pass state reached only through some Catch (what runs when a step fails)
  succeed        a Succeed state, or a Pass or Choice that ends the forward chain (a Task that ends it, such as
                 ConfirmOrder, is a forward step: it does work)
  fail           a Fail state
A Map is one node; its iterations' states are drawn inside it (their retries and errors count on the Map).
The browser lays the graph out (dagre, sagalocal/console/static/console.js); this module only says what
the nodes and edges are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sagalocal.console.execution import Visit


@dataclass
class Node:
    name: str
    type: str
    role: str
    comment: str = ""
    status: str = ""  # on an execution: not-visited, or execution.Visit.status
    retries: int = 0
    error: str = ""
    redriven: int = 0  # on an execution: how many redrives resumed at this state


@dataclass
class Edge:
    id: str
    source: str
    target: str
    kind: str  # next, catch, choice, default
    errors: list[str] = field(default_factory=list)  # a catch edge: the errors it matches, in Catch order
    label: str = ""
    taken: bool = False
    step: int = 0  # on an execution: the order in which the path took this edge (1, 2, ...)


@dataclass
class Graph:
    start: str
    comment: str
    nodes: list[Node]
    edges: list[Edge]
    inner: dict[str, str] = field(default_factory=dict)  # a Map's iteration state -> the Map

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _edges(name: str, state: dict[str, Any]) -> list[Edge]:
    out: list[Edge] = []
    if state.get("Next"):
        out.append(Edge(f"{name}>next>{state['Next']}", name, state["Next"], "next"))
    for n, choice in enumerate(state.get("Choices", [])):
        variable = choice.get("Variable", "")
        out.append(Edge(f"{name}>choice{n}>{choice['Next']}", name, choice["Next"], "choice", label=variable))
    if state.get("Default"):
        out.append(Edge(f"{name}>default>{state['Default']}", name, state["Default"], "default", label="Default"))
    # Catches to one target merge into one edge: the label lists what each matches, in order.
    catches: dict[str, list[list[str]]] = {}
    for catch in state.get("Catch", []):
        catches.setdefault(catch["Next"], []).append(list(catch.get("ErrorEquals", [])))
    for target, matchers in catches.items():
        errors = [error for matcher in matchers for error in matcher]
        label = " / ".join(", ".join(matcher) for matcher in matchers)
        out.append(Edge(f"{name}>catch>{target}", name, target, "catch", errors, label))
    return out


def state_graph(definition: dict[str, Any]) -> Graph:
    states: dict[str, dict[str, Any]] = definition["States"]
    edges = [edge for name, state in states.items() for edge in _edges(name, state)]
    forward: set[str] = set()
    todo = [definition["StartAt"]]
    while todo:
        name = todo.pop()
        if name in forward or name not in states:
            continue
        forward.add(name)
        todo += [e.target for e in edges if e.source == name and e.kind != "catch"]
    nodes = []
    for name, state in states.items():
        kind = state["Type"]
        if kind == "Fail":
            role = "fail"
        elif kind == "Succeed" or (state.get("End") and name in forward and kind not in ("Task", "Map", "Parallel")):
            role = "succeed"
        elif name in forward:
            role = "forward"
        else:
            role = "compensation"
        nodes.append(Node(name, kind, role, state.get("Comment", "")))
    inner = {inner_name: name for name, state in states.items() if state["Type"] == "Map"
             for inner_name in ((state.get("ItemProcessor") or state.get("Iterator") or {}).get("States") or {})}
    return Graph(definition["StartAt"], definition.get("Comment", ""), nodes, edges, inner)


def _catch_matches(edge: Edge, error: str) -> bool:
    return error in edge.errors or "States.ALL" in edge.errors or (
        "States.TaskFailed" in edge.errors and error != "States.Timeout")


def overlay(graph: Graph, visits: list[Visit]) -> Graph:
    """The graph with an execution's visits on it: each state's status, and the edges the path took.

    A redriven execution's states are as its latest run left them: a state visited again after a redrive has that
    visit's status and error (the failure before it stays in the timeline); its retries count over every run."""
    for node in graph.nodes:
        node.status = "not-visited"
    runs_begun: set[int] = set()
    last_run: dict[str, int] = {}  # a node -> the run of its latest visit
    for visit in visits:
        shown = graph.node(graph.inner.get(visit.name, visit.name))
        if visit.run not in runs_begun:
            runs_begun.add(visit.run)
            shown.redriven += visit.run > 0  # a redriven run begins here: the state that had failed
        if last_run.setdefault(shown.name, visit.run) != visit.run:
            shown.error, last_run[shown.name] = "", visit.run  # visited again by a later run: that run's error
        if visit.name in graph.inner:  # a Map iteration's state: its retries and error count on the Map
            node = graph.node(graph.inner[visit.name])
            node.retries += visit.retries
            node.error = node.error or (visit.error if visit.status == "failed" else "")
            continue
        node = graph.node(visit.name)
        node.status = visit.status
        node.retries += visit.retries
        node.error = visit.error or node.error
    visits = [visit for visit in visits if visit.name not in graph.inner]
    for step, (here, there) in enumerate(zip(visits, visits[1:], strict=False), start=1):
        if here.run != there.run:
            continue  # a redrive: no transition between the state its run ended in and the one the next run entered
        candidates = [e for e in graph.edges if e.source == here.name and e.target == there.name]
        if here.status == "failed" and here.error:
            preferred = [e for e in candidates if e.kind == "catch" and _catch_matches(e, here.error)]
        else:
            preferred = [e for e in candidates if e.kind != "catch"]
        for edge in (preferred or candidates)[:1]:
            edge.taken = True
            edge.step = edge.step or step
    return graph
