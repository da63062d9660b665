// Access keys the server showed this tab (on rotation), kept in memory only, to fill the snippets.
export const shownKeys = $state({});
