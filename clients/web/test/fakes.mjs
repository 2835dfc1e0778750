// Test doubles for the unit tests of src/state: a clock moved by hand, an
// in-memory BroadcastChannel bus, and a Web Locks manager with the API's
// ordering rules (requests granted in order; shared holders share).

export class ManualClock {
  t = 1_000_000;
  timers = [];
  seq = 0;
  now = () => this.t;
  setTimeout = (fn, ms) => {
    const h = { at: this.t + ms, fn, id: this.seq++ };
    this.timers.push(h);
    return h;
  };
  clearTimeout = (h) => {
    this.timers = this.timers.filter((x) => x !== h);
  };
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      this.timers.sort((a, b) => a.at - b.at || a.id - b.id);
      const h = this.timers[0];
      if (!h || h.at > end) break;
      this.timers.shift();
      this.t = h.at;
      h.fn();
    }
    this.t = end;
  }
}

/** A set of channels that deliver to each other (never to the sender), in order, asynchronously, by structured clone. */
export function bus() {
  const members = new Set();
  const sent = [];
  const make = () => {
    const listeners = new Set();
    const ch = {
      postMessage(m) {
        const copy = structuredClone(m);
        sent.push(copy);
        for (const other of members) {
          if (other === ch) continue;
          setTimeout(() => {
            if (members.has(other)) for (const l of other.listeners) l({ data: structuredClone(copy) });
          }, 0);
        }
      },
      addEventListener: (_t, l) => listeners.add(l),
      removeEventListener: (_t, l) => listeners.delete(l),
      close: () => members.delete(ch),
      listeners,
    };
    members.add(ch);
    return ch;
  };
  return { make, sent };
}

export class FakeLocks {
  names = new Map();
  log = [];
  request(name, opts, cb) {
    const mode = opts.mode ?? "exclusive";
    let st = this.names.get(name);
    if (!st) this.names.set(name, (st = { held: new Set(), queue: [] }));
    return new Promise((resolve, reject) => {
      const req = {
        mode,
        run: async () => {
          this.log.push(["grant", name, mode]);
          try {
            resolve(await cb({ name, mode }));
          } catch (e) {
            reject(e);
          } finally {
            st.held.delete(req);
            this.log.push(["release", name, mode]);
            this.#pump(st);
          }
        },
      };
      st.queue.push(req);
      this.#pump(st);
    });
  }
  #pump(st) {
    while (st.queue.length) {
      const r = st.queue[0];
      const ok = st.held.size === 0 || (r.mode === "shared" && [...st.held].every((h) => h.mode === "shared"));
      if (!ok) return;
      st.queue.shift();
      st.held.add(r);
      r.run();
    }
  }
}

/** Lets queued timers and promise jobs run. */
export async function settle(rounds = 10) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setTimeout(r, 0));
}

/** Waits until pred() holds, polling; fails after ms. For waits on real asynchronous work (WebCrypto), whose time a fixed number of rounds cannot bound. */
export async function waitFor(pred, ms = 5000, what = "condition") {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** A promise with its resolve and reject functions. */
export function deferred() {
  let resolve, reject;
  const promise = new Promise((a, b) => {
    resolve = a;
    reject = b;
  });
  return { promise, resolve, reject };
}
