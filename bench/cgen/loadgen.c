// wschat benchmark load generator in C: the modes `fanout` and `steady` of bench/loadgen.js.
//
// Build: cc -O2 -o bench/cgen/loadgen bench/cgen/loadgen.c   (C11 + POSIX, Linux epoll)
//
// Same interface as bench/loadgen.js: the JSON config is argv[1] (or argv[2] when argv[1] is not
// JSON, so `loadgen - CFG` works too); JSON lines on stdout ("ready", "result", "status",
// "fatal"); commands "go", "status", "exit" on stdin. Same config fields (mode, proto, url, gen,
// clients, offset, senders, inflight, rate, totalSenders, warmup, duration, payload, room,
// concurrency, addrs), same message text "<CLOCK_MONOTONIC us>:<sender id>:xxx..." (padded to
// `payload` bytes), same histogram ([[lower bound us, width us, count], ...], 10 us buckets up
// to 2 s, then 1 ms buckets up to 120 s). The modes `connect` (and idle_max) stay on Node.
//
// Why: the Node generator spends ~10 us per incoming TCP segment, so taking in one broadcast to
// 1,000 sockets takes it ~10 ms, which is the floor of the steady-state p99 it can measure.
// Here one epoll loop reads each socket in 64 KiB chunks and finds the time stamp in every frame
// with memmem, without a JSON parser.
//
// Limitations: ws:// only (no TLS), IPv4 literal hosts only, Sec-WebSocket-Accept is not
// checked (only the 101 status), no UTF-8 validation (as loadgen.js: skipUTF8Validation),
// no permessage-deflate. "loopDelay*" in the result is the busy time of one epoll batch
// (how long an event can wait behind the others), the nearest thing to Node's event-loop delay.
// With `spinUs` (config, default 0: off) it polls that long after any activity before it blocks
// (see main); that polling is part of its CPU use, and "spinPercent" says how much of it.
// "genLag*Ms": how long received data waited in the socket before this process read it (kernel
// receive time stamp, SO_TIMESTAMPNS, of the newest segment of each read, against the time of
// the read): the part of the measured latency that is the generator's own.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sched.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

// ---------------------------------------------------------------- utilities
static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void die(const char *fmt, ...);

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) die("out of memory");
  return q;
}

typedef struct {
  char *p;
  size_t len, cap;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->p = xrealloc(b->p, b->cap);
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
}

#define SB_LIT(b, lit) sb_put((b), (lit), sizeof(lit) - 1)

static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    sb_put(b, tmp, (size_t)n);
    return;
  }
  char *big = malloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb_put(b, big, (size_t)n);
  free(big);
}

// JSON string (keys and values here are short ASCII; escape the few that need it)
static void sb_jstr(sbuf *b, const char *s) {
  SB_LIT(b, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char e[2] = {'\\', (char)c};
      sb_put(b, e, 2);
    } else if (c < 0x20) {
      sb_printf(b, "\\u%04x", c);
    } else
      sb_put(b, (const char *)&c, 1);
  }
  SB_LIT(b, "\"");
}

static void emit(sbuf *b) {
  SB_LIT(b, "\n");
  size_t off = 0;
  while (off < b->len) {
    ssize_t n = write(1, b->p + off, b->len - off);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      exit(1);
    }
    off += (size_t)n;
  }
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

static void die(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  sbuf b = {0};
  SB_LIT(&b, "{\"event\":\"fatal\",\"error\":");
  sb_jstr(&b, msg);
  SB_LIT(&b, "}");
  emit(&b);
  exit(1);
}

// string -> count table (error kinds, close codes, failures)
#define KMAX 32
typedef struct {
  int n;
  char k[KMAX][64];
  long v[KMAX];
} kcount;

static void kc_add(kcount *t, const char *k) {
  for (int i = 0; i < t->n; i++)
    if (!strcmp(t->k[i], k)) {
      t->v[i]++;
      return;
    }
  if (t->n == KMAX) k = "other";
  if (t->n == KMAX) {
    for (int i = 0; i < t->n; i++)
      if (!strcmp(t->k[i], k)) {
        t->v[i]++;
        return;
      }
    t->n--;  // overwrite the last one with "other"
  }
  snprintf(t->k[t->n], sizeof t->k[0], "%s", k);
  t->v[t->n++] = 1;
}

static void sb_kc(sbuf *b, const char *name, const kcount *t) {
  sb_printf(b, ",\"%s\":{", name);
  for (int i = 0; i < t->n; i++) {
    if (i) SB_LIT(b, ",");
    sb_jstr(b, t->k[i]);
    sb_printf(b, ":%ld", t->v[i]);
  }
  SB_LIT(b, "}");
}

static const char *errname(int e) {
  switch (e) {
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case EPIPE: return "EPIPE";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case EADDRINUSE: return "EADDRINUSE";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case ENOBUFS: return "ENOBUFS";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ENETUNREACH: return "ENETUNREACH";
    default: return strerror(e);
  }
}

// ---------------------------------------------------------------- config (flat JSON object)
static const char *cfg_json;

static const char *cfg_find(const char *key) {
  char pat[80];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  const char *p = cfg_json;
  size_t pl = strlen(pat);
  while ((p = strstr(p, pat))) {
    const char *q = p + pl;
    while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
    if (*q == ':') {
      q++;
      while (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r') q++;
      return q;
    }
    p += pl;
  }
  return NULL;
}

static double cfg_num(const char *key, double def) {
  const char *v = cfg_find(key);
  if (!v || *v == 'n') return def;
  char *end;
  double d = strtod(v, &end);
  return end == v ? def : d;
}

static char *cfg_str(const char *key, const char *def) {
  const char *v = cfg_find(key);
  if (!v || *v != '"') return def ? strdup(def) : NULL;
  v++;
  sbuf b = {0};
  SB_LIT(&b, "");
  while (*v && *v != '"') {
    if (*v == '\\' && v[1]) v++;
    sb_put(&b, v, 1);
    v++;
  }
  return b.p;
}

// integer array; returns count, *out malloc'd
static int cfg_intarr(const char *key, int **out) {
  *out = NULL;
  const char *v = cfg_find(key);
  if (!v || *v != '[') return 0;
  v++;
  int n = 0, cap = 0;
  int *a = NULL;
  for (;;) {
    while (*v == ' ' || *v == ',' || *v == '\n' || *v == '\t' || *v == '\r') v++;
    if (*v == ']' || !*v) break;
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v) break;
    if (n == cap) {
      cap = cap ? cap * 2 : 16;
      a = xrealloc(a, sizeof(int) * (size_t)cap);
    }
    a[n++] = (int)x;
    v = end;
  }
  *out = a;
  return n;
}

enum { M_FANOUT, M_STEADY };
static int mode;
static int is_wschat;
static struct sockaddr_in dst;
static char *host_hdr, *path;
static int gen_id, nclients, offset, nsenders, inflight_cfg, total_senders, payload_len, conc,
    naddrs;
static int *sender_ids;
static double rate, warmup, duration;
static char *room;
static int spin_us;  // keep polling (epoll_wait timeout 0 + sched_yield) this long after activity

// ---------------------------------------------------------------- histograms
#define FINE_US 10
#define FINE_N 200000
#define COARSE_N 120000
static uint32_t fine[FINE_N], coarse[COARSE_N];
static uint64_t overflow_n;

static inline void record(int64_t us) {
  if (us < 0) us = 0;
  int64_t b = us / FINE_US;
  if (b < FINE_N)
    fine[b]++;
  else {
    int64_t m = us / 1000;
    if (m < COARSE_N)
      coarse[m]++;
    else
      overflow_n++;
  }
}

// busy time of one epoll batch, 10 us buckets up to 1 s
#define LOOP_N 100000
static uint32_t loophist[LOOP_N];
static uint64_t loop_count;
static int64_t loop_max;

static void loop_record(int64_t us) {
  int64_t b = us / 10;
  if (b >= LOOP_N) b = LOOP_N - 1;
  loophist[b]++;
  loop_count++;
  if (us > loop_max) loop_max = us;
}

// generator lag (read time - kernel receive time), 10 us buckets up to 1 s
static uint32_t laghist[LOOP_N];
static uint64_t lag_count;
static int64_t lag_max;

static double hist_pct_ms(const uint32_t *h, uint64_t count, int64_t max, double pct) {
  if (!count) return 0;
  uint64_t want = (uint64_t)(count * pct / 100.0 + 0.999999), acc = 0;
  if (want < 1) want = 1;
  for (int i = 0; i < LOOP_N; i++) {
    acc += h[i];
    if (acc >= want) return (i + 1) * 10 / 1000.0;
  }
  return max / 1000.0;
}

static double loop_p99_ms(void) {
  if (!loop_count) return 0;
  uint64_t want = (loop_count * 99 + 99) / 100, acc = 0;
  for (int i = 0; i < LOOP_N; i++) {
    acc += loophist[i];
    if (acc >= want) return (i + 1) * 10 / 1000.0;
  }
  return loop_max / 1000.0;
}

// ---------------------------------------------------------------- clients
enum { S_NEW, S_CONNECTING, S_HANDSHAKE, S_OPEN, S_CLOSED };

typedef struct client {
  int fd;
  int state;
  int gidx, sid;
  int joined, done;
  int inflight;
  int64_t last_progress, started;
  char *pend;  // unparsed input (partial frame / handshake)
  size_t plen, pcap;
  char *out;  // unsent output
  size_t olen, ocap;
  char *frag;  // fragmented message being assembled
  size_t flen, fcap;
  int want_out;
  int64_t next_at;  // steady: next send time
  long k;           // steady: sends done
  int64_t start_at;
} client;

static client *clients;
static int epfd;

// counters (names as in loadgen.js)
static long deliveries, received, sent, sent_in_window, stalls, errors_n, closed_early, join_errors;
static kcount error_kinds, close_codes, join_error_codes, failures;
static int measuring, sending, exiting;

static int next_open, in_progress, connected_n, failed_n, ready_sent;
static int64_t t_connect0, t_connect_last;
static struct rusage ru_connect0;

static char *sb_shared;  // read buffer
static size_t sb_cap;
#define CHUNK (64 * 1024)

static uint32_t rng_state = 2463534242u;
static inline uint32_t rng(void) {
  uint32_t x = rng_state;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return rng_state = x;
}

static void note_error(const char *k) {
  errors_n++;
  kc_add(&error_kinds, k);
}

static void start_more(void);

static void finish(client *c, int ok, const char *why) {
  if (c->done) return;
  c->done = 1;
  in_progress--;
  if (ok) {
    connected_n++;
    t_connect_last = now_us();
  } else {
    failed_n++;
    kc_add(&failures, why);
  }
  start_more();
}

static void close_client(client *c, int code) {
  if (c->state == S_CLOSED) return;
  if (c->fd >= 0) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
  }
  c->fd = -1;
  c->state = S_CLOSED;
  if (!exiting) {
    closed_early++;
    char k[16];
    snprintf(k, sizeof k, "%d", code);
    kc_add(&close_codes, k);
  }
  char why[32];
  snprintf(why, sizeof why, "close:%d", code);
  finish(c, 0, why);
}

static void fail_client(client *c, const char *kind) {
  note_error(kind);
  char why[96];
  snprintf(why, sizeof why, "error:%s", kind);
  finish(c, 0, why);
  close_client(c, 1006);
}

static void set_events(client *c, int want_out) {
  if (c->want_out == want_out) return;
  c->want_out = want_out;
  struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void out_append(client *c, const char *p, size_t n) {
  if (c->olen + n > c->ocap) {
    c->ocap = (c->olen + n) * 2;
    c->out = xrealloc(c->out, c->ocap);
  }
  memcpy(c->out + c->olen, p, n);
  c->olen += n;
}

static void flush_out(client *c) {
  while (c->olen) {
    ssize_t n = send(c->fd, c->out, c->olen, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      fail_client(c, errname(errno));
      return;
    }
    memmove(c->out, c->out + n, c->olen - (size_t)n);
    c->olen -= (size_t)n;
  }
  set_events(c, c->olen > 0);
}

static void write_raw(client *c, const char *p, size_t n) {
  if (c->state == S_CLOSED) return;
  if (c->olen == 0) {
    ssize_t w;
    do w = send(c->fd, p, n, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
      if (errno != EAGAIN) {
        fail_client(c, errname(errno));
        return;
      }
      w = 0;
    }
    if ((size_t)w == n) return;
    p += w;
    n -= (size_t)w;
  }
  out_append(c, p, n);
  set_events(c, 1);
}

// one masked client frame
static void send_frame(client *c, int opcode, const char *payload, size_t n) {
  char stackbuf[1024];
  size_t need = n + 14;
  char *f = need <= sizeof stackbuf ? stackbuf : malloc(need);
  size_t h = 0;
  f[h++] = (char)(0x80 | opcode);
  if (n < 126)
    f[h++] = (char)(0x80 | n);
  else if (n < 65536) {
    f[h++] = (char)(0x80 | 126);
    f[h++] = (char)(n >> 8);
    f[h++] = (char)(n & 255);
  } else {
    f[h++] = (char)(0x80 | 127);
    for (int i = 7; i >= 0; i--) f[h++] = (char)((uint64_t)n >> (8 * i));
  }
  uint32_t m = rng();
  unsigned char mk[4] = {(unsigned char)m, (unsigned char)(m >> 8), (unsigned char)(m >> 16),
                         (unsigned char)(m >> 24)};
  memcpy(f + h, mk, 4);
  h += 4;
  for (size_t i = 0; i < n; i++) f[h + i] = (char)(payload[i] ^ mk[i & 3]);
  write_raw(c, f, h + n);
  if (f != stackbuf) free(f);
}

static void send_one(client *c) {
  if (c->state != S_OPEN) return;
  c->inflight++;
  sent++;
  if (measuring) sent_in_window++;
  char text[4096];
  int hl = snprintf(text, sizeof text, "%lld:%d:", (long long)now_us(), c->sid);
  int tl = hl;
  while (tl < payload_len && tl < (int)sizeof text - 1) text[tl++] = 'x';
  text[tl] = 0;
  if (!is_wschat) {
    send_frame(c, 1, text, (size_t)tl);
    return;
  }
  sbuf b = {0};
  SB_LIT(&b, "{\"type\":\"say\",\"room\":");
  sb_jstr(&b, room);
  SB_LIT(&b, ",\"text\":\"");
  sb_put(&b, text, (size_t)tl);
  SB_LIT(&b, "\"}");
  send_frame(c, 1, b.p, b.len);
  free(b.p);
}

// ---------------------------------------------------------------- incoming messages
static const char *skip_sep(const char *p, const char *e) {
  while (p < e && (*p == ':' || *p == ' ' || *p == '"')) p++;
  return p;
}

// send time (us) carried by a chat message, or -1; *sid_out = sender id
static int64_t parse_msg(const char *buf, size_t n, int *sid_out) {
  const char *p = buf, *e = buf + n;
  if (is_wschat) {
    const char *t = memmem(buf, n, "\"type\"", 6);
    if (!t) return -1;
    t = skip_sep(t + 6, e);
    if (t >= e || *t != 'm') return -1;  // only "message" starts with 'm'
    p = memmem(buf, n, "\"text\"", 6);
    if (!p) return -1;
    p = skip_sep(p + 6, e);
  }
  int64_t ts = 0;
  const char *d = p;
  while (p < e && *p >= '0' && *p <= '9') ts = ts * 10 + (*p++ - '0');
  if (p >= e || *p != ':' || p == d) return -1;
  int sid = 0;
  for (p++; p < e && *p >= '0' && *p <= '9'; p++) sid = sid * 10 + (*p - '0');
  *sid_out = sid;
  return ts;
}

static void check_welcome(client *c, const char *buf, size_t n) {
  const char *e = buf + n;
  const char *t = memmem(buf, n, "\"type\"", 6);
  if (!t) return;
  t = skip_sep(t + 6, e);
  if ((size_t)(e - t) >= 7 && !memcmp(t, "welcome", 7)) {
    c->joined = 1;
    finish(c, 1, NULL);
  } else if ((size_t)(e - t) >= 5 && !memcmp(t, "error", 5)) {
    char code[48] = "?";
    const char *k = memmem(buf, n, "\"code\"", 6);
    if (k) {
      k = skip_sep(k + 6, e);
      size_t i = 0;
      while (k < e && *k != '"' && *k != ',' && *k != '}' && i < sizeof code - 1) code[i++] = *k++;
      code[i] = 0;
    }
    join_errors++;
    kc_add(&join_error_codes, code);
    c->joined = 1;  // stop looking
    char why[64];
    snprintf(why, sizeof why, "join:%s", code);
    finish(c, 0, why);
  }
}

static void on_message(client *c, const char *buf, size_t n, int64_t t) {
  int sid = -1;
  int64_t ts = parse_msg(buf, n, &sid);
  if (ts < 0) {
    if (is_wschat && !c->joined) check_welcome(c, buf, n);
    return;
  }
  received++;
  if (measuring) {
    deliveries++;
    record(t - ts);
  }
  if (c->sid >= 0 && sid == c->sid) {
    c->inflight--;
    c->last_progress = t;
    if (mode == M_FANOUT && sending) send_one(c);
  }
}

static void on_open(client *c) {
  c->state = S_OPEN;
  if (!is_wschat) {
    finish(c, 1, NULL);
    return;
  }
  sbuf b = {0};
  SB_LIT(&b, "{\"type\":\"join\",\"room\":");
  sb_jstr(&b, room);
  sb_printf(&b, ",\"name\":\"u%d\"}", c->gidx);
  send_frame(c, 1, b.p, b.len);
  free(b.p);
}

static void on_frame(client *c, int fin, int op, const char *p, size_t n, int64_t t) {
  switch (op) {
    case 0x0:
    case 0x1:
    case 0x2:
      if (fin && op != 0 && c->flen == 0) {
        on_message(c, p, n, t);
        return;
      }
      if (c->flen + n > c->fcap) {
        c->fcap = (c->flen + n) * 2;
        c->frag = xrealloc(c->frag, c->fcap);
      }
      memcpy(c->frag + c->flen, p, n);
      c->flen += n;
      if (fin) {
        on_message(c, c->frag, c->flen, t);
        c->flen = 0;
      }
      return;
    case 0x8: {
      int code = n >= 2 ? ((unsigned char)p[0] << 8 | (unsigned char)p[1]) : 1005;
      send_frame(c, 0x8, p, n >= 2 ? 2 : 0);
      close_client(c, code);
      return;
    }
    case 0x9:
      send_frame(c, 0xA, p, n);
      return;
    default:
      return;
  }
}

// parses what it can of buf; returns bytes consumed
static size_t process(client *c, char *buf, size_t len, int64_t t) {
  size_t off = 0;
  if (c->state == S_HANDSHAKE) {
    char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end) {
      if (len > 65536) fail_client(c, "handshake too long");
      return 0;
    }
    if (len < 12 || memcmp(buf, "HTTP/1.1 101", 12) != 0) {
      fail_client(c, "Unexpected server response");
      return len;
    }
    off = (size_t)(end - buf) + 4;
    on_open(c);
    if (c->state == S_CLOSED) return len;
  }
  while (len - off >= 2) {
    unsigned char b0 = (unsigned char)buf[off], b1 = (unsigned char)buf[off + 1];
    uint64_t pl = b1 & 0x7f;
    size_t hl = 2;
    if (pl == 126) {
      if (len - off < 4) break;
      pl = ((unsigned char)buf[off + 2] << 8) | (unsigned char)buf[off + 3];
      hl = 4;
    } else if (pl == 127) {
      if (len - off < 10) break;
      pl = 0;
      for (int i = 0; i < 8; i++) pl = pl << 8 | (unsigned char)buf[off + 2 + i];
      hl = 10;
    }
    size_t mk = (b1 & 0x80) ? 4 : 0;
    if ((uint64_t)(len - off) < hl + mk + pl) break;
    char *p = buf + off + hl + mk;
    if (mk)
      for (uint64_t i = 0; i < pl; i++) p[i] ^= buf[off + hl + (i & 3)];
    on_frame(c, b0 & 0x80, b0 & 0x0f, p, (size_t)pl, t);
    if (c->state == S_CLOSED) return len;
    off += hl + mk + (size_t)pl;
  }
  return off;
}

static void on_readable(client *c) {
  for (;;) {
    size_t pl = c->plen;
    if (sb_cap < pl + CHUNK) {
      sb_cap = pl + CHUNK;
      sb_shared = xrealloc(sb_shared, sb_cap);
    }
    if (pl) memcpy(sb_shared, c->pend, pl);
    size_t room_left = sb_cap - pl;
    struct iovec iov = {.iov_base = sb_shared + pl, .iov_len = room_left};
    union {
      char buf[CMSG_SPACE(sizeof(struct timespec)) + 64];
      struct cmsghdr align;
    } ctrl;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (measuring) {
      mh.msg_control = ctrl.buf;
      mh.msg_controllen = sizeof ctrl.buf;
    }
    ssize_t n = recvmsg(c->fd, &mh, 0);
    if (n > 0 && measuring) {
      for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
          struct timespec rx, rt;
          memcpy(&rx, CMSG_DATA(cm), sizeof rx);
          clock_gettime(CLOCK_REALTIME, &rt);
          int64_t lag = ((int64_t)rt.tv_sec - rx.tv_sec) * 1000000 + (rt.tv_nsec - rx.tv_nsec) / 1000;
          if (lag < 0) lag = 0;
          int64_t b = lag / 10;
          laghist[b < LOOP_N ? b : LOOP_N - 1]++;
          lag_count++;
          if (lag > lag_max) lag_max = lag;
        }
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      fail_client(c, errname(errno));
      return;
    }
    if (n == 0) {
      close_client(c, 1006);
      return;
    }
    int64_t t = now_us();
    size_t total = pl + (size_t)n;
    size_t used = process(c, sb_shared, total, t);
    if (c->state == S_CLOSED) return;
    size_t left = total - used;
    if (left > c->pcap) {
      c->pcap = left * 2;
      c->pend = xrealloc(c->pend, c->pcap);
    }
    if (left) memcpy(c->pend, sb_shared + used, left);
    c->plen = left;
    if ((size_t)n < room_left) return;  // drained (level-triggered epoll brings us back)
  }
}

static void send_handshake(client *c) {
  char key[25];
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  for (int i = 0; i < 21; i++) key[i] = b64[rng() & 63];
  key[21] = b64[rng() & 48];  // 16 bytes: the last char carries 2 bits
  key[22] = key[23] = '=';
  key[24] = 0;
  char req[1024];
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                   path, host_hdr, key);
  c->state = S_HANDSHAKE;
  write_raw(c, req, (size_t)n);
}

static void on_writable(client *c) {
  if (c->state == S_CONNECTING) {
    int err = 0;
    socklen_t sl = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
    if (err) {
      fail_client(c, errname(err));
      return;
    }
    set_events(c, 0);
    send_handshake(c);
    return;
  }
  flush_out(c);
}

static void open_client(client *c) {
  c->started = now_us();
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    c->fd = -1;
    c->state = S_CONNECTING;
    fail_client(c, errname(errno));
    return;
  }
  c->fd = fd;
  c->state = S_CONNECTING;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
  if (naddrs > 0) {
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl((127u << 24) | (uint32_t)(2 + c->gidx % naddrs));
    if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) {
      fail_client(c, errname(errno));
      return;
    }
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
  c->want_out = 1;
  epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
  if (connect(fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
    fail_client(c, errname(errno));
    return;
  }
}

static void emit_ready(void);

static void start_more(void) {
  while (in_progress < conc && next_open < nclients) {
    client *c = &clients[next_open++];
    in_progress++;
    open_client(c);
  }
  if (!ready_sent && next_open >= nclients && in_progress == 0) emit_ready();
}

// ---------------------------------------------------------------- reporting
static double ru_sec(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

static void emit_ready(void) {
  ready_sent = 1;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu = ru_sec(ru.ru_utime) - ru_sec(ru_connect0.ru_utime) + ru_sec(ru.ru_stime) -
               ru_sec(ru_connect0.ru_stime);
  int64_t tl = connected_n ? t_connect_last : t_connect0;
  double secs = (tl - t_connect0) / 1e6;
  sbuf b = {0};
  sb_printf(&b, "{\"event\":\"ready\",\"gen\":%d,\"generator\":\"c\",\"connected\":%d,\"failed\":%d",
            gen_id, connected_n, failed_n);
  sb_kc(&b, "failures", &failures);
  sb_printf(&b, ",\"connectSeconds\":%.6f,\"connectStart\":%.6f,\"connectEnd\":%.6f", secs,
            t_connect0 / 1e6, tl / 1e6);
  sb_printf(&b, ",\"joinErrors\":%ld", join_errors);
  sb_kc(&b, "joinErrorCodes", &join_error_codes);
  sb_printf(&b, ",\"errors\":%ld", errors_n);
  sb_kc(&b, "errorKinds", &error_kinds);
  sb_printf(&b, ",\"connectCpuPercent\":%.3f}", secs > 0 ? 100 * cpu / secs : 0.0);
  emit(&b);
}

static int open_count(void) {
  int n = 0;
  for (int i = 0; i < nclients; i++) n += clients[i].state == S_OPEN;
  return n;
}

static int64_t spin_total_us;  // time spent polling with nothing to do, in the window

static struct rusage ru_win0;
static int64_t wall_win0;
static double w_window, w_user, w_sys;

static void start_window(void) {
  measuring = 1;
  getrusage(RUSAGE_SELF, &ru_win0);
  wall_win0 = now_us();
  spin_total_us = 0;
  memset(loophist, 0, sizeof loophist);
  loop_count = 0;
  memset(laghist, 0, sizeof laghist);
  lag_count = 0;
  lag_max = 0;
  loop_max = 0;
}

static void end_window(void) {
  measuring = 0;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  w_window = (now_us() - wall_win0) / 1e6;
  w_user = ru_sec(ru.ru_utime) - ru_sec(ru_win0.ru_utime);
  w_sys = ru_sec(ru.ru_stime) - ru_sec(ru_win0.ru_stime);
}

static void emit_result(void) {
  sbuf b = {0};
  sb_printf(&b,
            "{\"event\":\"result\",\"gen\":%d,\"generator\":\"c\",\"deliveries\":%ld,"
            "\"received\":%ld,\"sentInWindow\":%ld,\"sent\":%ld,\"stalls\":%ld,\"errors\":%ld",
            gen_id, deliveries, received, sent_in_window, sent, stalls, errors_n);
  sb_kc(&b, "errorKinds", &error_kinds);
  sb_printf(&b, ",\"closedEarly\":%ld", closed_early);
  sb_kc(&b, "closeCodes", &close_codes);
  sb_printf(&b, ",\"open\":%d,\"hist\":[", open_count());
  int first = 1;
  for (int i = 0; i < FINE_N; i++)
    if (fine[i]) {
      sb_printf(&b, "%s[%d,%d,%u]", first ? "" : ",", i * FINE_US, FINE_US, fine[i]);
      first = 0;
    }
  for (int i = 0; i < COARSE_N; i++)
    if (coarse[i]) {
      sb_printf(&b, "%s[%lld,1000,%u]", first ? "" : ",", (long long)i * 1000, coarse[i]);
      first = 0;
    }
  if (overflow_n)
    sb_printf(&b, "%s[%lld,0,%llu]", first ? "" : ",", (long long)COARSE_N * 1000,
              (unsigned long long)overflow_n);
  sb_printf(&b,
            "],\"window\":%.6f,\"cpuUser\":%.6f,\"cpuSystem\":%.6f,\"cpuPercent\":%.3f,"
            "\"loopDelayP99Ms\":%.3f,\"loopDelayMaxMs\":%.3f,\"spinPercent\":%.3f,\"spinUs\":%d,"
            "\"genLagP50Ms\":%.3f,\"genLagP99Ms\":%.3f,\"genLagMaxMs\":%.3f,\"genLagReads\":%llu}",
            w_window, w_user, w_sys, w_window > 0 ? 100 * (w_user + w_sys) / w_window : 0.0,
            loop_p99_ms(), loop_max / 1000.0,
            w_window > 0 ? 100 * (spin_total_us / 1e6) / w_window : 0.0, spin_us,
            hist_pct_ms(laghist, lag_count, lag_max, 50), hist_pct_ms(laghist, lag_count, lag_max, 99),
            lag_max / 1000.0, (unsigned long long)lag_count);
  emit(&b);
}

static void emit_status(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  long rss_pages = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f) {
    long sz;
    if (fscanf(f, "%ld %ld", &sz, &rss_pages) != 2) rss_pages = 0;
    fclose(f);
  }
  sbuf b = {0};
  sb_printf(&b, "{\"event\":\"status\",\"gen\":%d,\"generator\":\"c\",\"open\":%d,\"closedEarly\":%ld",
            gen_id, open_count(), closed_early);
  sb_kc(&b, "closeCodes", &close_codes);
  sb_printf(&b, ",\"errors\":%ld", errors_n);
  sb_kc(&b, "errorKinds", &error_kinds);
  sb_printf(&b, ",\"cpuTotal\":%.6f,\"rssBytes\":%ld}",
            ru_sec(ru.ru_utime) + ru_sec(ru.ru_stime), rss_pages * sysconf(_SC_PAGESIZE));
  emit(&b);
}

// ---------------------------------------------------------------- run phases
enum { P_IDLE, P_WARMUP, P_WINDOW, P_DRAIN1, P_DRAIN2, P_DONE };
static int phase = P_IDLE;
static int64_t phase_until, drain_deadline, next_check, next_watchdog;
static long drain_received;
static int drain_rounds;

static void go(void) {
  if (phase != P_IDLE) return;
  int64_t t = now_us();
  sending = 1;
  if (mode == M_FANOUT) {
    for (int i = 0; i < nsenders && i < nclients; i++) {
      client *c = &clients[i];
      if (c->state != S_OPEN) continue;
      c->last_progress = t;
      for (int k = 0; k < inflight_cfg; k++) send_one(c);
    }
    next_watchdog = t + 1000000;
  } else {
    double interval = 1e6 / rate;
    int total = total_senders > 0 ? total_senders : nsenders;
    for (int i = 0; i < nsenders && i < nclients; i++) {
      client *c = &clients[i];
      c->start_at = t + (int64_t)(c->sid * interval / total);
      c->next_at = c->start_at;
      c->k = 0;
    }
  }
  phase = P_WARMUP;
  phase_until = t + (int64_t)(warmup * 1e6);
}

static int senders_inflight(void) {
  for (int i = 0; i < nsenders && i < nclients; i++)
    if (clients[i].state == S_OPEN && clients[i].inflight > 0) return 1;
  return 0;
}

// runs what is due; returns the next deadline (us)
static int64_t run_timers(int64_t t) {
  int64_t next = t + 100000;
  // handshake timeout (30 s, as loadgen.js)
  if (!ready_sent)
    for (int i = 0; i < next_open; i++) {
      client *c = &clients[i];
      if (!c->done && c->state != S_CLOSED && t - c->started > 30000000) {
        fail_client(c, "handshake timeout");
      }
    }
  if (sending && mode == M_STEADY) {
    double interval = 1e6 / rate;
    for (int i = 0; i < nsenders && i < nclients; i++) {
      client *c = &clients[i];
      if (c->state != S_OPEN) continue;
      if (t >= c->next_at) {
        send_one(c);
        c->k++;
        c->next_at = c->start_at + (int64_t)(c->k * interval);
      }
      if (c->next_at < next) next = c->next_at;
    }
  }
  if (sending && mode == M_FANOUT) {
    if (t >= next_watchdog) {
      for (int i = 0; i < nsenders && i < nclients; i++) {
        client *c = &clients[i];
        if (c->state == S_OPEN && c->inflight > 0 && t - c->last_progress > 10000000) {
          stalls++;
          c->inflight = 0;
          c->last_progress = t;
          for (int k = 0; k < inflight_cfg; k++) send_one(c);
        }
      }
      next_watchdog = t + 1000000;
    }
    if (next_watchdog < next) next = next_watchdog;
  }
  switch (phase) {
    case P_WARMUP:
      if (t >= phase_until) {
        start_window();
        phase = P_WINDOW;
        phase_until = t + (int64_t)(duration * 1e6);
      }
      break;
    case P_WINDOW:
      if (t >= phase_until) {
        end_window();
        sending = 0;
        phase = P_DRAIN1;
        drain_deadline = t + 5000000;
        next_check = t;
      }
      break;
    case P_DRAIN1:
      if (t >= next_check) {
        if (t >= drain_deadline || !senders_inflight()) {
          phase = P_DRAIN2;
          drain_rounds = 0;
          drain_received = received;
          next_check = t + 300000;
        } else
          next_check = t + 20000;
      }
      break;
    case P_DRAIN2:
      if (t >= next_check) {
        drain_rounds++;
        if (received == drain_received || drain_rounds >= 30) {
          phase = P_DONE;
          emit_result();
        } else {
          drain_received = received;
          next_check = t + 300000;
        }
      }
      break;
  }
  if ((phase == P_WARMUP || phase == P_WINDOW) && phase_until < next) next = phase_until;
  if ((phase == P_DRAIN1 || phase == P_DRAIN2) && next_check < next) next = next_check;
  return next;
}

// ---------------------------------------------------------------- stdin commands
static char cmdbuf[4096];
static size_t cmdlen;

static void on_stdin(void) {
  for (;;) {
    ssize_t n = read(0, cmdbuf + cmdlen, sizeof cmdbuf - 1 - cmdlen);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return;
      exit(0);
    }
    if (n == 0) {
      exiting = 1;
      exit(0);
    }
    cmdlen += (size_t)n;
    char *nl;
    while ((nl = memchr(cmdbuf, '\n', cmdlen))) {
      *nl = 0;
      char *s = cmdbuf;
      while (*s == ' ' || *s == '\t') s++;
      char *e = nl;
      while (e > s && (e[-1] == ' ' || e[-1] == '\r' || e[-1] == '\t')) *--e = 0;
      if (!strcmp(s, "go"))
        go();
      else if (!strcmp(s, "status"))
        emit_status();
      else if (!strcmp(s, "exit")) {
        exiting = 1;
        exit(0);
      }
      size_t used = (size_t)(nl - cmdbuf) + 1;
      memmove(cmdbuf, cmdbuf + used, cmdlen - used);
      cmdlen -= used;
    }
    if (cmdlen >= sizeof cmdbuf - 1) cmdlen = 0;  // garbage line
  }
}

// ---------------------------------------------------------------- main
static void parse_url(const char *url) {
  if (strncmp(url, "ws://", 5)) die("only ws:// URLs are supported: %s", url);
  const char *h = url + 5;
  const char *slash = strchr(h, '/');
  size_t hl = slash ? (size_t)(slash - h) : strlen(h);
  host_hdr = strndup(h, hl);
  path = strdup(slash ? slash : "/");
  char host[256];
  int port = 80;
  const char *colon = memchr(h, ':', hl);
  size_t nl = colon ? (size_t)(colon - h) : hl;
  if (nl >= sizeof host) die("bad url %s", url);
  memcpy(host, h, nl);
  host[nl] = 0;
  if (colon) port = atoi(colon + 1);
  if (!strcmp(host, "localhost")) strcpy(host, "127.0.0.1");
  dst.sin_family = AF_INET;
  dst.sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) die("host must be an IPv4 address: %s", host);
}

int main(int argc, char **argv) {
  cfg_json = NULL;
  for (int i = 1; i < argc; i++)
    if (argv[i][0] == '{') cfg_json = argv[i];
  if (!cfg_json) die("usage: loadgen '<json config>'");
  char *m = cfg_str("mode", "");
  if (!strcmp(m, "fanout"))
    mode = M_FANOUT;
  else if (!strcmp(m, "steady"))
    mode = M_STEADY;
  else
    die("mode %s is not supported by the C generator (use loadgen.js)", m);
  char *proto = cfg_str("proto", "raw");
  is_wschat = !strcmp(proto, "wschat");
  char *url = cfg_str("url", NULL);
  if (!url) die("no url");
  parse_url(url);
  gen_id = (int)cfg_num("gen", 0);
  nclients = (int)cfg_num("clients", 0);
  offset = (int)cfg_num("offset", 0);
  nsenders = cfg_intarr("senders", &sender_ids);
  inflight_cfg = (int)cfg_num("inflight", 8);
  rate = cfg_num("rate", 5);
  if (rate <= 0) rate = 5;
  total_senders = (int)cfg_num("totalSenders", nsenders);
  warmup = cfg_num("warmup", 1);
  duration = cfg_num("duration", 2);
  payload_len = (int)cfg_num("payload", 140);
  room = cfg_str("room", "bench");
  conc = (int)cfg_num("concurrency", 50);
  if (conc < 1) conc = 1;
  naddrs = (int)cfg_num("addrs", 0);
  spin_us = (int)cfg_num("spinUs", 0);
  rng_state ^= (uint32_t)now_us() ^ (uint32_t)getpid() * 2654435761u;
  if (!rng_state) rng_state = 1;

  clients = calloc((size_t)(nclients ? nclients : 1), sizeof(client));
  for (int i = 0; i < nclients; i++) {
    clients[i].fd = -1;
    clients[i].gidx = offset + i;
    clients[i].sid = i < nsenders ? sender_ids[i] : -1;
    clients[i].joined = !is_wschat;
  }
  epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) die("epoll_create1: %s", strerror(errno));
  fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
  static client stdin_tag;
  struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev) < 0) die("epoll stdin: %s", strerror(errno));

  getrusage(RUSAGE_SELF, &ru_connect0);
  t_connect0 = now_us();
  t_connect_last = t_connect0;
  start_more();

  // Spinning: a generator that takes in each segment faster than the server writes them would
  // otherwise go to sleep after every one, and every segment would cost a wake-up (IPI, idle
  // exit: expensive in a VM) on both CPUs. So after any activity it keeps polling for spin_us
  // (yielding the CPU to anything else runnable there) before it blocks in epoll_wait.
  enum { NEV = 1024 };
  static struct epoll_event evs[NEV];
  int64_t last_event = 0;
  for (;;) {
    int64_t t = now_us();
    int64_t next = run_timers(t);
    t = now_us();
    int timeout = next <= t ? 0 : (int)((next - t + 999) / 1000);
    int spinning = spin_us > 0 && t - last_event < spin_us;
    if (spinning) timeout = 0;
    int n = epoll_wait(epfd, evs, NEV, timeout);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait: %s", strerror(errno));
    }
    int64_t b0 = now_us();
    if (n == 0) {
      if (spinning) {
        sched_yield();
        if (measuring) spin_total_us += now_us() - t;
      }
      continue;
    }
    last_event = b0;
    for (int i = 0; i < n; i++) {
      client *c = evs[i].data.ptr;
      if (c == &stdin_tag) {
        on_stdin();
        continue;
      }
      if (c->state == S_CLOSED) continue;
      uint32_t e = evs[i].events;
      if (e & EPOLLOUT) on_writable(c);
      if (c->state == S_CLOSED) continue;
      if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
        if (c->state == S_CONNECTING) {
          on_writable(c);  // connect failed (EPOLLERR): report SO_ERROR
          if (c->state == S_CONNECTING || c->state == S_CLOSED) continue;
        }
        on_readable(c);
      }
    }
    if (measuring) loop_record(now_us() - b0);
  }
}
