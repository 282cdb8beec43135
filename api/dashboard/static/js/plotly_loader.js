// plotly.js, loaded on demand from the service (the `plotly` Python package ships it).

const PLOTLY_SRC = "/static/vendor/plotly.min.js";
let loading = null;

/** Resolves to window.Plotly, loading its script once; rejects with a readable message. */
export function loadPlotly() {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!loading) {
    loading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = PLOTLY_SRC;
      script.onload = () => (window.Plotly ? resolve(window.Plotly)
        : reject(new Error("plotly.js loaded but did not define Plotly")));
      script.onerror = () => {
        loading = null;
        reject(new Error(`plotly.js could not be loaded from ${PLOTLY_SRC}; the plot is ` +
          "missing (the tables below still work)"));
      };
      document.head.append(script);
    });
  }
  return loading;
}
