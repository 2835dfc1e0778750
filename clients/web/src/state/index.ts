// The key state machines of the device and its groups, and their reach
// across tabs. See docs/DEVICE-STATES.md.

export { type State, type Event, type Transition, STATES, TRANSITIONS, next } from "./table.js";
export { StateError, type StateErrorCode, type Failure, failureOf } from "./errors.js";
export { type Clock, systemClock } from "./clock.js";
export { type MarkerStore, memoryMarkers, defaultMarkers } from "./marker.js";
export { KeyMachine, type MachineOptions, type UnlockWork, type StateChange, type Listener, type Origin } from "./machine.js";
export { type HandleCodec, assertShareable } from "./share.js";
export { type Channel, type Message, CHANNEL } from "./tabs.js";
export { type Locks, DEVICE_LOCK, groupLock, withGroupWriter, withDeviceExclusive } from "./locks.js";
export { type Touchable, watchActivity } from "./activity.js";
export { Device, type DeviceOptions, type DeviceEvent, type VersionStore, DEVICE_SCOPE, groupScope } from "./device.js";
