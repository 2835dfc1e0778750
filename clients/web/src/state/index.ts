// The key state machines of the device and its groups, and their reach
// across tabs. See docs/DEVICE.md, "States".

export { type KeyState, type KeyEvent, type Transition, STATES, TRANSITIONS, next } from "./table.js";
export { StateError, type StateErrorCode, type Failure, failureOf } from "./errors.js";
export { type Clock, systemClock } from "./clock.js";
export { type MarkerStore, memoryMarkers, defaultMarkers } from "./marker.js";
export { KeyMachine, type MachineOptions, type UnlockWork, type StateChange, type StateListener, type ChangeOrigin } from "./machine.js";
export { type HandleCodec, assertShareable } from "./share.js";
export { type Channel, type TabMessage, CHANNEL } from "./tabs.js";
export { type Locks, DEVICE_LOCK, groupLock, withGroupWriter, withDeviceExclusive } from "./locks.js";
export { type Touchable, watchActivity } from "./activity.js";
export { DeviceStates, type DeviceStatesOptions, type StatesEvent, type VersionStore, DEVICE_SCOPE, groupScope } from "./states.js";
