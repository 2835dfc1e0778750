// The test app's service worker (bundled as sw.js by the browser test):
// the app shell from Cache Storage first, so the page loads offline; and
// background sync with the device key alone: it opens the device's
// database, unlocks the groups enrolled on the device without the user,
// and reads their records.

import { Device } from "../../src/device.js";
import { DeviceSession } from "../../src/session.js";

declare const self: ServiceWorkerGlobalScope;

const CACHE = "escrowd-test-shell-v1";
const SHELL = ["/sdk.html", "/sdk.js"];

self.addEventListener("install", (e) => e.waitUntil(caches.open(CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting())));
self.addEventListener("activate", (e) => e.waitUntil(self.clients.claim()));
self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || !SHELL.includes(url.pathname)) return;
  e.respondWith(caches.match(url.pathname).then((r) => r ?? fetch(e.request)));
});

self.addEventListener("message", (e) => {
  const port = e.ports[0];
  if (!port || (e.data as { type?: string })?.type !== "background-sync") return;
  e.waitUntil((async () => {
    try {
      const device = await Device.open({ name: (e.data as { db: string }).db });
      // role "background": the device key opens the groups, no user; the
      // worker neither posts its keys to the pages nor follows their locks.
      const session = await DeviceSession.open({ device, role: "background" });
      await session.unlockDevice();
      const groups = session.states.groups().filter((g) => session.states.group(g).state === "unlocked").sort();
      const read: Record<string, string> = {};
      for (const g of groups) {
        for (const id of await device.recordIds(g)) {
          const pt = await session.get(g, id);
          if (pt) read[g + "/" + id] = new TextDecoder().decode(pt);
        }
      }
      session.lock();
      session.close();
      device.close();
      port.postMessage({ ok: true, groups, read, deviceId: device.deviceId });
    } catch (err) {
      port.postMessage({ ok: false, code: (err as { code?: string }).code ?? "exception", message: String(err) });
    }
  })());
});
