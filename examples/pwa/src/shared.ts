// What the page and the service worker share: the configuration, the
// device, its signer and the transport.

import { Device } from "../../../clients/web/src/device.js";
import { Signer, idbKeyStore } from "./sign.js";
import { Backend, SyncTransport } from "./transport.js";

export const DB_NAME = "escrowd-pwa";
export const SYNC_TAG = "escrowd-sync";
export const PERIOD_MS = 15 * 60 * 1000;

export interface Config {
  /** The sync backend's origin, e.g. http://127.0.0.1:8080. */
  backend: string;
}

/** config reads config.json (cached with the app shell, so it is there offline). */
export async function config(): Promise<Config> {
  const r = await fetch(new URL("config.json", globalThis.location.href));
  if (!r.ok) throw new Error("config.json: " + r.status);
  const c = (await r.json()) as Config;
  if (typeof c.backend !== "string") throw new Error("config.json names no backend");
  return c;
}

export interface Session {
  device: Device;
  signer: Signer;
  backend: Backend;
  transport: SyncTransport;
  account: string;
}

/** openSession opens an enrolled device (no user secret: the device and signing keys only). */
export async function openSession(cfg: Config): Promise<Session | null> {
  let device: Device;
  try {
    device = await Device.open({ name: DB_NAME });
  } catch {
    return null; // no device key: not enrolled
  }
  const [account] = await device.users();
  if (!account) {
    device.close();
    return null;
  }
  const signer = await Signer.load(idbKeyStore());
  const backend = new Backend(cfg.backend, signer);
  return { device, signer, backend, transport: new SyncTransport(backend, account), account };
}
