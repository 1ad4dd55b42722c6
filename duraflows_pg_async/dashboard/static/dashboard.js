// Draws the Mermaid diagrams of the page (an external script: the pages allow no inline one).
// securityLevel "strict": the diagram text comes from definitions, so Mermaid sanitises labels
// and allows no click handlers.
/* global mermaid */
mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: "neutral" });
mermaid.run({ querySelector: "pre.mermaid" }).then(() => {
  document.body.dataset.diagrams = "drawn";
}, (error) => {
  document.body.dataset.diagrams = "failed";
  console.error("duraflows: a diagram could not be drawn", error);
});
