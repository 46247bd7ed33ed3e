// What the server accepts (docs/protocol.md), checked here first so that a mistake is explained
// next to the input instead of coming back as an error frame.

export const ROOM_RE = /^[A-Za-z0-9_.-]{1,64}$/;
// protocol.md: no control (Cc), format (Cf) or surrogate (Cs) characters in a name.
const NAME_BAD_CHAR_RE = /[\p{Cc}\p{Cf}\p{Cs}]/u;
const MAX_NAME_CHARS = 32;
export const MAX_TEXT_CHARS = 2000;

export function charCount(text) {
  return [...text].length; // code points, as the server counts them
}

export function nameProblem(name) {
  if (!name) return 'Please enter a name.';
  if (charCount(name) > MAX_NAME_CHARS) return `At most ${MAX_NAME_CHARS} characters.`;
  if (name !== name.trim()) return 'No spaces at the start or end.';
  if (NAME_BAD_CHAR_RE.test(name)) return 'Only printable characters, please.';
  return '';
}
