// One shared "now" that ticks, so relative times and uptimes stay current without each page polling.
export const clock = $state({ now: Date.now() });
setInterval(() => {
  clock.now = Date.now();
}, 5000);
