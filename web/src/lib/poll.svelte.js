// Refresh a page's data every few seconds while it is shown (and the tab is visible).

/**
 * Call `fn` now and then every `ms` (a number or a function giving one), never two at once;
 * stops when the calling component goes away. Call it during component setup.
 */
export function every(ms, fn, { now = true } = {}) {
  $effect(() => {
    let stopped = false;
    let timer;
    const delay = () => (typeof ms === "function" ? ms() : ms);
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) {
        try {
          await fn();
        } catch {
          /* the page shows its own errors */
        }
      }
      if (!stopped) timer = setTimeout(tick, delay());
    };
    timer = setTimeout(tick, now ? 0 : delay());
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  });
}
