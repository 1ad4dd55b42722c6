// Parses diagrams with Mermaid itself, in node, without a browser (test_diagram.py runs it).
//
// Usage: node mermaid_parse.mjs NODE_MODULES < diagrams
// NODE_MODULES holds the npm packages `mermaid` and `jsdom`. The diagrams on standard input are
// separated by NUL characters. Prints one JSON array: for each diagram, either
// {"ok": true, "type", "direction", "states": {id: [label, ...]}, "relations": [[from, to, label]]} with
// the labels as Mermaid shows them, or {"ok": false, "error"}.
import { pathToFileURL } from "node:url";
import { join } from "node:path";

const modules = process.argv[2];
const { JSDOM } = await import(pathToFileURL(join(modules, "jsdom", "lib", "api.js")).href);
const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const mermaidUrl = pathToFileURL(join(modules, "mermaid", "dist", "mermaid.core.mjs")).href;
const { default: mermaid } = await import(mermaidUrl);
mermaid.initialize({ startOnLoad: false });

// Mermaid parses an entity code (#35;) as a marker, ﬂ°°35¶ß, and writes it into the drawing as
// the HTML entity &#35;, which shows as its character: the label as a reader sees it.
const shown = (text) =>
  text.replace(/\uFB02\xB0\xB0(\d+)\xB6\xDF/g, (_, code) => String.fromCodePoint(Number(code)));

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const text of input.split("\0")) {
  try {
    // parse() runs Mermaid's preprocessing (front matter, %%{...}%% directives) as well.
    const parsed = await mermaid.parse(text);
    const diagram = await mermaid.mermaidAPI.getDiagramFromText(text);
    const db = diagram.db;
    const states = Object.fromEntries(
      [...db.getStates()].map(([id, state]) => [id, state.descriptions.map(shown)]),
    );
    const relations = db
      .getRelations()
      .map((r) => [r.id1, r.id2, r.relationTitle == null ? null : shown(r.relationTitle)]);
    results.push({ ok: true, type: parsed.diagramType, direction: db.getDirection(), states, relations });
  } catch (error) {
    results.push({ ok: false, error: String(error?.message ?? error) });
  }
}
console.log(JSON.stringify(results));
