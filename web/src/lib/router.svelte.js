// A tiny history router: the URL is the state, so every page is a deep link that survives a reload.

export const location_ = $state({ path: window.location.pathname, search: window.location.search });

function sync() {
  location_.path = window.location.pathname;
  location_.search = window.location.search;
}

export function navigate(to, { replace = false } = {}) {
  if (to === window.location.pathname + window.location.search) return;
  if (replace) history.replaceState(null, "", to);
  else history.pushState(null, "", to);
  sync();
  if (!replace) window.scrollTo(0, 0);
}

export function query(name) {
  return new URLSearchParams(location_.search).get(name);
}

/** Set one query parameter without a new history entry (filters, windows). */
export function setQuery(name, value) {
  const params = new URLSearchParams(location_.search);
  if (value === null || value === "" || value === undefined) params.delete(name);
  else params.set(name, value);
  const qs = params.toString();
  navigate(window.location.pathname + (qs ? `?${qs}` : ""), { replace: true });
}

window.addEventListener("popstate", sync);

/** Same-origin <a href="/..."> clicks become client-side navigation; the API and new tabs are left alone. */
document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const a = event.target.closest && event.target.closest("a[href]");
  if (!a || a.target || a.hasAttribute("download") || a.origin !== window.location.origin) return;
  if (a.pathname.startsWith("/api/") || a.pathname === "/schema") return;
  event.preventDefault();
  navigate(a.pathname + a.search);
});

const ROUTES = [
  ["/", "models"],
  ["/tokens", "tokens"],
  ["/audit", "audit"],
  ["/models/:name", "model"],
  ["/models/:name/:tab", "model"],
  ["/models/:name/builds/:number", "model"],
  ["/models/:name/builds/:number/:section", "model"],
  ["/models/:name/builds/:number/diff/:other", "model"],
];

/** The page and its parameters for a path: {page, params}; page "notfound" when nothing matches. */
export function match(path) {
  const parts = path.replace(/\/+$/, "").split("/").slice(1);
  if (path === "/" || path === "") return { page: "models", params: {} };
  for (const [pattern, page] of ROUTES) {
    const want = pattern.split("/").slice(1);
    if (want.length !== parts.length || pattern === "/") continue;
    const params = {};
    let ok = true;
    want.forEach((seg, i) => {
      if (seg.startsWith(":")) params[seg.slice(1)] = decodeURIComponent(parts[i]);
      else if (seg !== parts[i]) ok = false;
    });
    if (ok) return { page, params };
  }
  return { page: "notfound", params: {} };
}
