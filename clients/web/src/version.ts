/** The key bundle format version this package reads and writes. */
export const FORMAT_VERSION = 2;
