/*
 * A minimal HTTP/1.1 upstream for the pinned benchmark (compare.py --pinned):
 * one thread, epoll, keep-alive, and the same fixed answer to every request,
 * a 100-byte body. It reads just enough of each request to find where it
 * ends (the blank line, then Content-Length bytes of body), so the proxy
 * under test, not the app, is what the benchmark measures. Benchmark tool
 * only: it is not a general HTTP server.
 *
 * Build: gcc -O2 -o fixed-upstream test-harness/bench/fixed_upstream.c
 * Run:   fixed-upstream PORT   (listens on 127.0.0.1:PORT)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536
#define MAX_CONNS 65536

static const char RESPONSE[] =
    "HTTP/1.1 200 OK\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 100\r\n"
    "\r\n"
    "0123456789012345678901234567890123456789012345678901234567890123456789"
    "01234567890123456789012345678\n"; /* 70 + 29 + 1 = 100 bytes of body */

struct conn {
    char *buf;
    size_t len;
    /* Body bytes of the current request still to skip. */
    size_t body_left;
};

static struct conn *conns[MAX_CONNS];

/* Content-Length of the head in buf[0..head_len), 0 when absent. */
static size_t content_length(const char *buf, size_t head_len) {
    static const char name[] = "\r\ncontent-length:";
    size_t n = sizeof(name) - 1;
    for (size_t i = 0; i + n <= head_len; i++) {
        if (strncasecmp(buf + i, name, n) == 0) {
            return (size_t)strtoull(buf + i + n, NULL, 10);
        }
    }
    return 0;
}

static void close_conn(int ep, int fd) {
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    if (fd < MAX_CONNS && conns[fd]) {
        free(conns[fd]->buf);
        free(conns[fd]);
        conns[fd] = NULL;
    }
}

/* Answers every complete request in the connection's buffer. */
static int serve(int fd, struct conn *c) {
    size_t answers = 0;
    size_t pos = 0;
    for (;;) {
        if (c->body_left > 0) {
            size_t take = c->len - pos < c->body_left ? c->len - pos : c->body_left;
            pos += take;
            c->body_left -= take;
            if (c->body_left > 0) break;
        }
        char *end = memmem(c->buf + pos, c->len - pos, "\r\n\r\n", 4);
        if (!end) break;
        size_t head_len = (size_t)(end - (c->buf + pos)) + 4;
        c->body_left = content_length(c->buf + pos, head_len);
        pos += head_len;
        answers++;
        if (c->body_left > 0) continue;
    }
    memmove(c->buf, c->buf + pos, c->len - pos);
    c->len -= pos;
    if (c->len == BUF) return -1; /* a head larger than the buffer */
    /* Pipelined requests get their answers in one write. */
    static char out[(sizeof(RESPONSE) - 1) * 64];
    while (answers > 0) {
        size_t batch = answers > 64 ? 64 : answers;
        for (size_t i = 0; i < batch; i++) {
            memcpy(out + i * (sizeof(RESPONSE) - 1), RESPONSE, sizeof(RESPONSE) - 1);
        }
        size_t want = batch * (sizeof(RESPONSE) - 1), done = 0;
        while (done < want) {
            ssize_t w = write(fd, out + done, want - done);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0 && errno == EAGAIN) continue; /* small answers: the socket buffer drains quickly */
            if (w <= 0) return -1;
            done += (size_t)w;
        }
        answers -= batch;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s [127.0.0.1:]PORT\n", argv[0]);
        return 2;
    }
    /* callgrind.sh starts its app with 127.0.0.1:PORT, compare.py with PORT. */
    const char *port = strrchr(argv[1], ':');
    port = port ? port + 1 : argv[1];
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return 1;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (cfd < 0) break;
                    if (cfd >= MAX_CONNS) {
                        close(cfd);
                        continue;
                    }
                    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct conn *c = calloc(1, sizeof(*c));
                    c->buf = malloc(BUF);
                    conns[cfd] = c;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = cfd};
                    epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
                }
                continue;
            }
            struct conn *c = conns[fd];
            if (!c) continue;
            ssize_t r = read(fd, c->buf + c->len, BUF - c->len);
            if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (r <= 0) {
                close_conn(ep, fd);
                continue;
            }
            c->len += (size_t)r;
            if (serve(fd, c) < 0) close_conn(ep, fd);
        }
    }
}
