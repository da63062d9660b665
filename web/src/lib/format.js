// How numbers, sizes, times and durations read on screen.

const dateTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
});

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : dateTime.format(d);
}

export function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  const two = (big, bigUnit, small, smallUnit) =>
    small ? `${big}${bigUnit} ${small}${smallUnit}` : `${big}${bigUnit}`; // "1m", not "1m 0s"
  if (m < 60) return two(m, "m", s % 60, "s");
  const h = Math.floor(m / 60);
  if (h < 48) return two(h, "h", m % 60, "m");
  return two(Math.floor(h / 24), "d", h % 24, "h");
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "—";
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return iso;
  const s = (now - t) / 1000;
  if (s < 5) return "just now";
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 172800) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m ago`;
  return `${Math.floor(s / 86400)} days ago`;
}

export function since(iso, now = Date.now()) {
  if (!iso) return null;
  return (now - new Date(iso).getTime()) / 1000;
}

export function bytes(n) {
  if (n == null) return "—";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function shortDigest(digest) {
  if (!digest) return "—";
  const [algo, hex] = digest.includes(":") ? digest.split(":") : ["", digest];
  return `${algo ? `${algo}:` : ""}${hex.slice(0, 12)}`;
}

export function mode(m) {
  return m == null ? "—" : `0${(m & 0o777).toString(8)}`;
}

export function count(n) {
  return n == null ? "—" : new Intl.NumberFormat().format(n);
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}
