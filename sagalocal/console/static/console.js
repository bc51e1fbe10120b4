// Draws each [data-graph] figure: the server gives the nodes and edges (sagalocal/console/graph.py), dagre
// lays them out, and this file only places HTML boxes for the states and SVG paths for the edges.
"use strict";

(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const ROLE_NAMES = {forward: "forward step", compensation: "compensation", succeed: "succeeds", fail: "fails"};

  function element(tag, className, text) {
    const el = document.createElement(tag);
    if (className) el.className = className;
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function stateBox(node, compact) {
    const box = element("div", `state role-${node.role} status-${node.status}`);
    Object.assign(box.dataset, {state: node.name, role: node.role, status: node.status, retries: node.retries,
                                redriven: node.redriven || 0});
    box.title = node.comment;
    box.append(element("div", "state-name", node.name));
    box.append(element("div", "state-type", `${node.type} · ${ROLE_NAMES[node.role] || node.role}`));
    if (!compact && node.comment) box.append(element("div", "state-comment", node.comment));
    const badges = element("div", "state-badges");
    if (node.retries > 0) badges.append(element("span", "badge retries", `↻ ${node.retries} ${node.retries === 1 ? "retry" : "retries"}`));
    // The state that failed says ✖ and its error; a Fail state says which error the execution ends with.
    if (node.error) badges.append(element("span", "badge error", node.status === "failed" ? `✖ ${node.error}` : `ends with ${node.error}`));
    // A redrive resumed the execution here (the state that had failed): its status is the new run's.
    if (node.redriven > 0) badges.append(element("span", "badge redriven", `⟲ redriven${node.redriven > 1 ? ` ×${node.redriven}` : ""}`));
    if (badges.childElementCount) box.append(badges);
    return box;
  }

  function pathData(points) {
    return points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
  }

  function arrowMarker(defs, id) {
    const marker = document.createElementNS(SVG, "marker");
    // In user space, so a thick (taken) edge gets the same arrowhead as a thin one.
    for (const [k, v] of Object.entries({id, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "11",
                                         markerHeight: "11", markerUnits: "userSpaceOnUse",
                                         orient: "auto-start-reverse"})) marker.setAttribute(k, v);
    const tip = document.createElementNS(SVG, "path");
    tip.setAttribute("d", "M0,0 L10,5 L0,10 z");
    tip.setAttribute("class", `arrow ${id}`);
    marker.append(tip);
    defs.append(marker);
  }

  function draw(figure) {
    const model = JSON.parse(figure.querySelector("script.graph-model").textContent);
    const compact = figure.dataset.compact === "true";
    figure.querySelector(".graph-canvas")?.remove();
    const canvas = element("div", "graph-canvas");
    const svg = document.createElementNS(SVG, "svg");
    const defs = document.createElementNS(SVG, "defs");
    ["arrow-next", "arrow-catch", "arrow-taken"].forEach((id) => arrowMarker(defs, id));
    svg.append(defs);
    canvas.append(svg);
    figure.append(canvas);

    const g = new dagre.graphlib.Graph({multigraph: true});
    g.setGraph({rankdir: "TB", nodesep: 36, ranksep: compact ? 44 : 56, edgesep: 18, marginx: 12, marginy: 12});
    const boxes = new Map();
    for (const node of model.nodes) {
      const box = stateBox(node, compact);
      canvas.append(box);
      boxes.set(node.name, box);
      g.setNode(node.name, {width: box.offsetWidth, height: box.offsetHeight});
    }
    const labels = new Map();
    for (const edge of model.edges) {
      const label = edge.label ? element("div", `edge-label kind-${edge.kind}${edge.taken ? " taken" : ""}`, edge.label) : null;
      if (label) {
        label.dataset.edge = edge.id;
        canvas.append(label);
        labels.set(edge.id, label);
      }
      g.setEdge(edge.source, edge.target, {width: label ? label.offsetWidth : 0, height: label ? label.offsetHeight : 0,
                                           labelpos: "c"}, edge.id);
    }
    dagre.layout(g);

    for (const node of model.nodes) {
      const at = g.node(node.name), box = boxes.get(node.name);
      box.style.left = `${at.x - at.width / 2}px`;
      box.style.top = `${at.y - at.height / 2}px`;
    }
    // Taken edges last, so the path is drawn over the edges it crosses.
    const ordered = [...model.edges].sort((a, b) => Number(a.taken) - Number(b.taken));
    for (const edge of ordered) {
      const laid = g.edge(edge.source, edge.target, edge.id);
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", pathData(laid.points));
      path.setAttribute("class", `edge kind-${edge.kind}${edge.taken ? " taken" : ""}`);
      path.setAttribute("marker-end", `url(#${edge.taken ? "arrow-taken" : edge.kind === "catch" ? "arrow-catch" : "arrow-next"})`);
      Object.assign(path.dataset, {edge: edge.id, source: edge.source, target: edge.target, kind: edge.kind,
                                   taken: String(edge.taken)});
      svg.append(path);
      const label = labels.get(edge.id);
      if (label) {
        label.style.left = `${laid.x - label.offsetWidth / 2}px`;
        label.style.top = `${laid.y - label.offsetHeight / 2}px`;
      }
    }
    const size = g.graph();
    svg.setAttribute("width", size.width);
    svg.setAttribute("height", size.height);
    canvas.style.width = `${size.width}px`;
    canvas.style.height = `${size.height}px`;
    // A graph wider than the page is shrunk to fit (down to 60%), so the whole saga is seen at once.
    const room = figure.clientWidth - 20;
    if (size.width > room) canvas.style.zoom = String(Math.max(0.6, room / size.width));
    figure.dataset.drawn = "true";
  }

  // htmx.onLoad runs for the first page and again for every part a refresh swaps in.
  htmx.onLoad((root) => {
    const figures = root.matches?.("[data-graph]") ? [root] : root.querySelectorAll("[data-graph]");
    figures.forEach(draw);
  });
})();
