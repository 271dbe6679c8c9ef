/*
 * Sample wallet API behind a meshgate sidecar: POSIX sockets, one thread per
 * connection, a minimal HTTP/1.1 reader (keep-alive, Content-Length bodies;
 * chunked request bodies are refused with 501). Not a general HTTP server:
 * the sidecar in front of it is what faces clients.
 *
 *   gcc -O2 -pthread -o wallet wallet.c
 *   PORT=8080 EGRESS=127.0.0.1:15001 PEER_HOST=wallet-peer.internal ./wallet
 *   ./wallet [PORT [EGRESS]]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_HEAD 16384
#define MAX_HEADERS 64
#define MAX_BODY (1024 * 1024)
/* Longer than the sidecar's pool idle timeout (90s by default), so the
 * sidecar, not the app, closes idle keep-alive connections. */
#define IDLE_TIMEOUT_S 120
#define PEER_TIMEOUT_S 5

static const char *egress_addr;
static const char *peer_host;

/* ---- growable byte buffer used to build JSON and hold peer responses ---- */

struct buf {
    char *data;
    size_t len, cap;
};

static void buf_append(struct buf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) abort();
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s) { buf_append(b, s, strlen(s)); }

static void buf_printf(struct buf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) buf_append(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Appends s (n bytes) as a JSON string literal. */
static void buf_json_string(struct buf *b, const char *s, size_t n) {
    buf_str(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            buf_append(b, esc, 2);
        } else if (c < 0x20) {
            buf_printf(b, "\\u%04x", c);
        } else {
            buf_append(b, (const char *)&c, 1);
        }
    }
    buf_str(b, "\"");
}

static void buf_json_or_null(struct buf *b, const char *s) {
    if (s) buf_json_string(b, s, strlen(s));
    else buf_str(b, "null");
}

/* ---- a parsed request ---- */

struct header {
    char *name, *value;
};

struct request {
    char *method, *path;
    int minor_version;
    struct header headers[MAX_HEADERS];
    int n_headers;
    char *body;
    size_t body_len;
};

static const char *header_get(const struct request *r, const char *name) {
    for (int i = 0; i < r->n_headers; i++)
        if (strcasecmp(r->headers[i].name, name) == 0) return r->headers[i].value;
    return NULL;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static const char *reason(int status) {
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 413: return "Content Too Large";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    default: return "Unknown";
    }
}

/* extra_header is a full "name: value" line without CRLF, or NULL. */
static int respond(int fd, int status, const char *content_type, const char *body, size_t body_len,
                   const char *extra_header, int keep_alive) {
    struct buf head = {0};
    buf_printf(&head, "HTTP/1.1 %d %s\r\n", status, reason(status));
    buf_printf(&head, "content-type: %s\r\ncontent-length: %zu\r\n", content_type, body_len);
    if (extra_header) {
        buf_str(&head, extra_header);
        buf_str(&head, "\r\n");
    }
    buf_str(&head, keep_alive ? "\r\n" : "connection: close\r\n\r\n");
    int rc = write_all(fd, head.data, head.len);
    if (rc == 0 && body_len) rc = write_all(fd, body, body_len);
    free(head.data);
    return rc;
}

static int respond_json(int fd, int status, struct buf *json, const char *extra, int keep_alive) {
    int rc = respond(fd, status, "application/json", json->data, json->len, extra, keep_alive);
    free(json->data);
    return rc;
}

/* ---- handlers ---- */

/* Finds the string value of "user" in a flat JSON object; no escapes allowed. */
static int login_user(const char *body, char *out, size_t out_cap) {
    const char *p = strstr(body, "\"user\"");
    if (!p) return -1;
    p += 6;
    while (isspace((unsigned char)*p)) p++;
    if (*p++ != ':') return -1;
    while (isspace((unsigned char)*p)) p++;
    if (*p++ != '"') return -1;
    size_t n = 0;
    while (*p && *p != '"') {
        if (*p == '\\' || (unsigned char)*p < 0x20 || n + 1 >= out_cap) return -1;
        out[n++] = *p++;
    }
    if (*p != '"' || n == 0) return -1;
    out[n] = '\0';
    return 0;
}

static void meshgate_headers_json(struct buf *b, const struct request *r) {
    buf_str(b, "{");
    int first = 1;
    for (int i = 0; i < r->n_headers; i++) {
        const char *name = r->headers[i].name;
        if (strncasecmp(name, "x-meshgate-", 11) != 0) continue;
        int repeated = 0;
        for (int j = 0; j < i; j++)
            if (strcasecmp(r->headers[j].name, name) == 0) repeated = 1;
        if (repeated) continue;
        /* Header names are case-insensitive: report them lowercased. */
        struct buf lower = {0}, value = {0};
        for (const char *c = name; *c; c++) {
            char l = (char)tolower((unsigned char)*c);
            buf_append(&lower, &l, 1);
        }
        buf_str(&value, r->headers[i].value);
        for (int j = i + 1; j < r->n_headers; j++)
            if (strcasecmp(r->headers[j].name, name) == 0) {
                buf_str(&value, ", ");
                buf_str(&value, r->headers[j].value);
            }
        if (!first) buf_str(b, ",");
        first = 0;
        buf_json_string(b, lower.data, lower.len);
        buf_str(b, ":");
        buf_json_string(b, value.data, value.len);
        free(lower.data);
        free(value.data);
    }
    buf_str(b, "}");
}

/* Decodes a chunked body in place-free fashion into out; -1 if malformed. */
static int dechunk(const char *p, const char *end, struct buf *out) {
    for (;;) {
        char *after;
        unsigned long size = strtoul(p, &after, 16);
        if (after == p) return -1;
        const char *line_end = memmem(after, (size_t)(end - after), "\r\n", 2);
        if (!line_end) return -1;
        p = line_end + 2;
        if (size == 0) return 0;
        if ((size_t)(end - p) < size + 2) return -1;
        buf_append(out, p, size);
        p += size + 2;
    }
}

/* GET http://$EGRESS/api/balance with Host: $PEER_HOST; fills status and body. */
static int call_peer(int *status, struct buf *body, char *err, size_t err_cap) {
    char host[256];
    const char *colon = strrchr(egress_addr, ':');
    if (!colon || (size_t)(colon - egress_addr) >= sizeof host) {
        snprintf(err, err_cap, "bad EGRESS address %s", egress_addr);
        return -1;
    }
    memcpy(host, egress_addr, (size_t)(colon - egress_addr));
    host[colon - egress_addr] = '\0';

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    int gai = getaddrinfo(host, colon + 1, &hints, &res);
    if (gai != 0) {
        snprintf(err, err_cap, "resolve %s: %s", egress_addr, gai_strerror(gai));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = PEER_TIMEOUT_S};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        snprintf(err, err_cap, "connect %s: %s", egress_addr, strerror(errno));
        freeaddrinfo(res);
        if (fd >= 0) close(fd);
        return -1;
    }
    freeaddrinfo(res);

    struct buf req = {0};
    buf_printf(&req, "GET /api/balance HTTP/1.1\r\nhost: %s\r\nconnection: close\r\n\r\n", peer_host);
    int rc = write_all(fd, req.data, req.len);
    free(req.data);

    struct buf raw = {0};
    char chunk[4096];
    ssize_t n;
    while (rc == 0 && (n = recv(fd, chunk, sizeof chunk, 0)) != 0) {
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 || raw.len > MAX_BODY) {
            rc = -1;
            break;
        }
        buf_append(&raw, chunk, (size_t)n);
    }
    close(fd);

    const char *head_end = raw.data ? strstr(raw.data, "\r\n\r\n") : NULL;
    if (rc != 0 || !head_end || sscanf(raw.data, "HTTP/1.%*d %d", status) != 1) {
        snprintf(err, err_cap, "no valid response from %s", egress_addr);
        free(raw.data);
        return -1;
    }
    const char *payload = head_end + 4, *end = raw.data + raw.len;
    char *head = strndup(raw.data, (size_t)(head_end - raw.data));
    char *te = head ? strcasestr(head, "\r\ntransfer-encoding:") : NULL;
    char *cl = head ? strcasestr(head, "\r\ncontent-length:") : NULL;
    if (te && strcasestr(te, "chunked")) {
        rc = dechunk(payload, end, body);
    } else if (cl) {
        size_t want = strtoul(cl + 17, NULL, 10);
        rc = want <= (size_t)(end - payload) ? 0 : -1;
        if (rc == 0) buf_append(body, payload, want);
    } else {
        buf_append(body, payload, (size_t)(end - payload));
    }
    if (rc != 0) snprintf(err, err_cap, "truncated response from %s", egress_addr);
    free(head);
    free(raw.data);
    return rc;
}

static int handle(int fd, const struct request *r, int keep_alive) {
    const char *user = header_get(r, "x-meshgate-user");
    struct buf json = {0};

    if (strcmp(r->method, "GET") == 0 && strcmp(r->path, "/healthz") == 0)
        return respond(fd, 200, "text/plain", "ok", 2, NULL, keep_alive);

    if (strcmp(r->method, "POST") == 0 && strcmp(r->path, "/login") == 0) {
        char login[256];
        if (login_user(r->body, login, sizeof login) != 0) {
            buf_str(&json, "{\"error\":\"body must be {\\\"user\\\": \\\"<id>\\\"}\"}");
            return respond_json(fd, 400, &json, NULL, keep_alive);
        }
        struct buf instruction = {0};
        buf_str(&instruction, "x-meshgate-session-set: {\"sub\":");
        buf_json_string(&instruction, login, strlen(login));
        buf_str(&instruction, ",\"claims\":{\"tenant\":\"t-1\"},\"ttl\":\"2h\"}");
        buf_str(&json, "{\"ok\":true,\"user\":");
        buf_json_string(&json, login, strlen(login));
        buf_str(&json, "}");
        int rc = respond_json(fd, 200, &json, instruction.data, keep_alive);
        free(instruction.data);
        return rc;
    }

    if (strcmp(r->method, "GET") == 0 && strcmp(r->path, "/api/balance") == 0) {
        buf_str(&json, "{\"user\":");
        buf_json_or_null(&json, user);
        buf_str(&json, ",\"client_id\":");
        buf_json_or_null(&json, header_get(r, "x-meshgate-client-id"));
        buf_str(&json, ",\"balance\":100,\"host\":");
        buf_json_or_null(&json, header_get(r, "host"));
        buf_str(&json, ",\"meshgate_headers\":");
        meshgate_headers_json(&json, r);
        buf_str(&json, "}");
        return respond_json(fd, 200, &json, NULL, keep_alive);
    }

    if (strcmp(r->method, "POST") == 0 && strcmp(r->path, "/api/transfer") == 0) {
        buf_printf(&json, "{\"ok\":true,\"received\":%zu,\"user\":", r->body_len);
        buf_json_or_null(&json, user);
        buf_str(&json, "}");
        return respond_json(fd, 200, &json, NULL, keep_alive);
    }

    if (strcmp(r->method, "GET") == 0 && strcmp(r->path, "/api/peer") == 0) {
        int status = 0;
        struct buf body = {0};
        char err[512];
        if (call_peer(&status, &body, err, sizeof err) != 0) {
            buf_str(&json, "{\"error\":\"peer_unreachable\",\"detail\":");
            buf_json_string(&json, err, strlen(err));
            buf_str(&json, "}");
            free(body.data);
            return respond_json(fd, 502, &json, NULL, keep_alive);
        }
        buf_printf(&json, "{\"peer_status\":%d,\"peer_body\":", status);
        buf_json_string(&json, body.data ? body.data : "", body.len);
        buf_str(&json, "}");
        free(body.data);
        return respond_json(fd, 200, &json, NULL, keep_alive);
    }

    buf_str(&json, "{\"error\":\"not found\",\"path\":");
    buf_json_string(&json, r->path, strlen(r->path));
    buf_str(&json, "}");
    return respond_json(fd, 404, &json, NULL, keep_alive);
}

/* ---- the connection loop: read a head, then its body, answer, repeat ---- */

/* Splits the head (NUL-terminated, without the final blank line) in place. */
static int parse_head(char *head, struct request *r) {
    char *line_end = strstr(head, "\r\n");
    if (!line_end) return -1;
    *line_end = '\0';
    char *sp1 = strchr(head, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) return -1;
    *sp1 = *sp2 = '\0';
    r->method = head;
    r->path = sp1 + 1;
    r->minor_version = sp2[8] == '0' ? 0 : 1;
    char *query = strchr(r->path, '?');
    if (query) *query = '\0';

    r->n_headers = 0;
    for (char *line = line_end + 2; *line;) {
        char *next = strstr(line, "\r\n");
        if (next) *next = '\0';
        char *colon = strchr(line, ':');
        if (!colon || colon == line || r->n_headers == MAX_HEADERS) return -1;
        *colon = '\0';
        char *value = colon + 1;
        while (*value == ' ' || *value == '\t') value++;
        char *tail = value + strlen(value);
        while (tail > value && (tail[-1] == ' ' || tail[-1] == '\t')) *--tail = '\0';
        r->headers[r->n_headers].name = line;
        r->headers[r->n_headers].value = value;
        r->n_headers++;
        if (!next) break;
        line = next + 2;
    }
    return 0;
}

static int recv_some(int fd, char *p, size_t cap) {
    for (;;) {
        ssize_t n = recv(fd, p, cap, 0);
        if (n < 0 && errno == EINTR) continue;
        return (int)n;
    }
}

static void *serve_connection(void *arg) {
    int fd = (int)(long)arg;
    struct timeval tv = {.tv_sec = IDLE_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    char *in = malloc(MAX_HEAD + 1);
    size_t len = 0;
    int keep_alive = 1;
    while (in && keep_alive) {
        /* Read until the blank line that ends the head; the buffer may
         * already hold a pipelined request. */
        char *head_end;
        in[len] = '\0';
        while (!(head_end = strstr(in, "\r\n\r\n"))) {
            if (len == MAX_HEAD) {
                respond(fd, 431, "text/plain", "", 0, NULL, 0);
                goto done;
            }
            int n = recv_some(fd, in + len, MAX_HEAD - len);
            if (n <= 0) goto done;
            len += (size_t)n;
            in[len] = '\0';
        }
        size_t head_len = (size_t)(head_end - in) + 4;
        head_end[2] = '\0'; /* keep the last header's CRLF for parse_head */

        struct request r = {0};
        if (parse_head(in, &r) != 0) {
            respond(fd, 400, "text/plain", "", 0, NULL, 0);
            goto done;
        }
        const char *connection = header_get(&r, "connection");
        keep_alive = r.minor_version == 1 ? !(connection && strcasecmp(connection, "close") == 0)
                                          : (connection && strcasecmp(connection, "keep-alive") == 0);
        /* RFC 9112 3.2: an HTTP/1.1 request without Host is a 400, as in
         * most real servers; a proxy in front must always send one. */
        if (r.minor_version == 1 && !header_get(&r, "host")) {
            respond(fd, 400, "text/plain", "", 0, NULL, 0);
            goto done;
        }
        if (header_get(&r, "transfer-encoding")) {
            respond(fd, 501, "text/plain", "", 0, NULL, 0);
            goto done;
        }
        const char *cl = header_get(&r, "content-length");
        char *cl_end = NULL;
        unsigned long content_length = cl ? strtoul(cl, &cl_end, 10) : 0;
        if (cl && (cl_end == cl || *cl_end != '\0')) {
            respond(fd, 400, "text/plain", "", 0, NULL, 0);
            goto done;
        }
        if (content_length > MAX_BODY) {
            respond(fd, 413, "text/plain", "", 0, NULL, 0);
            goto done;
        }

        /* The body: what already arrived after the head, then the rest. */
        r.body = malloc(content_length + 1);
        if (!r.body) goto done;
        size_t have = len - head_len;
        size_t from_buffer = have < content_length ? have : content_length;
        memcpy(r.body, in + head_len, from_buffer);
        size_t got = from_buffer;
        while (got < content_length) {
            int n = recv_some(fd, r.body + got, content_length - got);
            if (n <= 0) {
                free(r.body);
                goto done;
            }
            got += (size_t)n;
        }
        r.body[content_length] = '\0';
        r.body_len = content_length;

        int rc = handle(fd, &r, keep_alive);
        free(r.body);
        if (rc != 0) break;

        /* Keep pipelined bytes for the next round. */
        size_t consumed = head_len + from_buffer;
        memmove(in, in + consumed, len - consumed);
        len -= consumed;
    }
done:
    free(in);
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    const char *port = argc > 1 ? argv[1] : getenv("PORT");
    const char *host = getenv("HOST");
    egress_addr = argc > 2 ? argv[2] : getenv("EGRESS");
    peer_host = getenv("PEER_HOST");
    if (!port) port = "8080";
    if (!host) host = "127.0.0.1";
    if (!egress_addr) egress_addr = "127.0.0.1:15001";
    if (!peer_host) peer_host = "wallet-peer.internal";
    signal(SIGPIPE, SIG_IGN);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *res;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "wallet (c): bad listen address %s:%s: %s\n", host, port, gai_strerror(gai));
        return 1;
    }
    int listener = socket(res->ai_family, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listener < 0 || bind(listener, res->ai_addr, res->ai_addrlen) != 0 || listen(listener, 1024) != 0) {
        fprintf(stderr, "wallet (c): cannot listen on %s:%s: %s\n", host, port, strerror(errno));
        return 1;
    }
    freeaddrinfo(res);
    fprintf(stderr, "wallet (c) listening on %s:%s, egress %s, peer %s\n", host, port, egress_addr, peer_host);

    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            if (errno != EINTR) perror("accept");
            if (errno == EMFILE || errno == ENFILE) usleep(10000); /* don't spin */
            continue;
        }
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&thread, &attr, serve_connection, (void *)(long)fd) != 0) close(fd);
        pthread_attr_destroy(&attr);
    }
}
