// @escrowd/device: the device side of escrowd's key bundle format v2
// (docs/FORMAT.md) and the device key hierarchy of docs/DEVICE.md.

/** The key bundle format version this package reads and writes. */
export const FORMAT_VERSION = 2;
