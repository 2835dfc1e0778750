// The service worker: it caches the app shell so the app opens offline,
// and syncs with the device key alone (no user secret) on Background Sync
// and Periodic Background Sync, where the browser offers them.

import { SYNC_TAG, config, openSession } from "./shared.js";

declare const self: ServiceWorkerGlobalScope;
const CACHE = "escrowd-pwa-shell-v1";
const SHELL = ["./", "index.html", "app.js", "style.css", "manifest.webmanifest", "icon.svg", "config.json"];

self.addEventListener("install", (e) => {
  e.waitUntil(
    (async () => {
      const c = await caches.open(CACHE);
      await c.addAll(SHELL.map((p) => new Request(p, { cache: "reload" })));
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (e) => {
  e.waitUntil(
    (async () => {
      for (const k of await caches.keys()) if (k !== CACHE) await caches.delete(k);
      await self.clients.claim();
    })(),
  );
});

// The shell is served network first (a new build shows at once) and from
// the cache when the network fails. The backend's API is never cached.
self.addEventListener("fetch", (e) => {
  const url = new URL(e.request.url);
  if (e.request.method !== "GET" || url.origin !== self.location.origin) return;
  e.respondWith(
    (async () => {
      const c = await caches.open(CACHE);
      try {
        const r = await fetch(e.request);
        if (r.ok) await c.put(e.request, r.clone());
        return r;
      } catch (err) {
        const hit = await c.match(e.request, { ignoreSearch: true });
        if (hit) return hit;
        throw err;
      }
    })(),
  );
});

async function backgroundSync(): Promise<void> {
  const s = await openSession(await config());
  if (!s) return;
  try {
    await s.device.sync(s.transport, s.account);
    for (const c of await self.clients.matchAll()) c.postMessage({ type: "synced", at: Date.now() });
  } finally {
    s.device.close();
  }
}

interface SyncEvent extends ExtendableEvent {
  tag: string;
}
self.addEventListener("sync" as keyof ServiceWorkerGlobalScopeEventMap, ((e: SyncEvent) => {
  if (e.tag === SYNC_TAG) e.waitUntil(backgroundSync());
}) as EventListener);
self.addEventListener("periodicsync" as keyof ServiceWorkerGlobalScopeEventMap, ((e: SyncEvent) => {
  if (e.tag === SYNC_TAG) e.waitUntil(backgroundSync());
}) as EventListener);
