// Low-power detection: the page is hidden, or the Battery API reports a low, discharging battery.
// Calls onChange(lowPower) whenever the answer changes. Works without a DOM (returns "not low").

/** Battery level at or below which a discharging device counts as low-power. */
export const LOW_BATTERY_LEVEL = 0.2;

export function watchPower({ document, navigator } = {}, onChange) {
  let hidden = document?.visibilityState === "hidden";
  let lowBattery = false;
  let last = hidden;
  let stopped = false;
  const emit = () => {
    const now = hidden || lowBattery;
    if (now !== last && !stopped) {
      last = now;
      onChange(now);
    }
  };
  const onVisibility = () => {
    hidden = document.visibilityState === "hidden";
    emit();
  };
  document?.addEventListener?.("visibilitychange", onVisibility);

  let battery = null;
  const onBattery = () => {
    lowBattery = !battery.charging && battery.level <= LOW_BATTERY_LEVEL;
    emit();
  };
  // Not every browser has it; Chromium does. Failure means "unknown", treated as not low.
  navigator
    ?.getBattery?.()
    .then((b) => {
      if (stopped) return;
      battery = b;
      b.addEventListener("levelchange", onBattery);
      b.addEventListener("chargingchange", onBattery);
      onBattery();
    })
    .catch(() => {});

  return {
    get lowPower() {
      return last;
    },
    stop() {
      stopped = true;
      document?.removeEventListener?.("visibilitychange", onVisibility);
      battery?.removeEventListener("levelchange", onBattery);
      battery?.removeEventListener("chargingchange", onBattery);
    },
  };
}
