// The test app's service worker: the app shell from Cache Storage first,
// so the page loads offline. Only the shell is cached, never an API answer.
const CACHE = "escrowd-test-shell-v1";
const SHELL = ["/sdk.html", "/sdk.js"];
self.addEventListener("install", (e) => e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting())));
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || !SHELL.includes(url.pathname)) return;
  e.respondWith(caches.match(url.pathname).then((r) => r || fetch(e.request)));
});
