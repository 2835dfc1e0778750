// The bundle the browser test's page loads (e2e/browser_test.go builds it
// with esbuild): the package, plus the vector runners and the few
// internals the page checks.

export * from "../src/index.js";
export { codeOf as classOf } from "../src/errors.js";
export { exportGDK, importGDK } from "../src/gdk.js";
export { runDeviceVectors, runStrictJSONVectors, runUnlockCodeVectors } from "./vectors.js";
