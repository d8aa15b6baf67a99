/* The test backend's listener: accepts connections on one TCP port and hands each to a
 * program of its own (fork, the socket as stdin and stdout, exec), as `nc -ll -e` does,
 * but with the listen backlog servers use (SOMAXCONN, capped by net.core.somaxconn).
 * busybox nc listens with a backlog of 2: a few simultaneous connects overflow it, the
 * kernel drops the SYNs, and the client's retransmission comes a second later -- past
 * the 500 ms dial timeout labelsync gives Caddy by default.
 *
 *   acceptor PORT PROGRAM [ARG...]
 *
 * Built static by tests/support/images.py (gcc -static), so the busybox image needs no
 * libc. Listens on [::]:PORT (IPv4 too), or 0.0.0.0:PORT where IPv6 is off.
 */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int listen_on(int port) {
    int one = 1, zero = 0;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd >= 0) {
        struct sockaddr_in6 address;
        memset(&address, 0, sizeof address);
        address.sin6_family = AF_INET6;
        address.sin6_port = htons((unsigned short)port);
        address.sin6_addr = in6addr_any;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, (struct sockaddr *)&address, sizeof address) == 0) return fd;
        close(fd);
    }
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in address4;
    memset(&address4, 0, sizeof address4);
    address4.sin_family = AF_INET;
    address4.sin_port = htons((unsigned short)port);
    address4.sin_addr.s_addr = htonl(INADDR_ANY);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&address4, sizeof address4) != 0) return -1;
    return fd;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: acceptor PORT PROGRAM [ARG...]\n");
        return 2;
    }
    int listener = listen_on(atoi(argv[1]));
    if (listener < 0 || listen(listener, SOMAXCONN) != 0) {
        perror("acceptor: listen");
        return 1;
    }
    signal(SIGCHLD, SIG_IGN); /* children are reaped by the kernel */
    for (;;) {
        int connection = accept(listener, NULL, NULL);
        if (connection < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("acceptor: accept");
            sleep(1);
            continue;
        }
        pid_t child = fork();
        if (child == 0) {
            close(listener);
            dup2(connection, 0);
            dup2(connection, 1);
            if (connection > 1) close(connection);
            signal(SIGCHLD, SIG_DFL);
            execv(argv[2], argv + 2);
            perror("acceptor: exec");
            _exit(127);
        }
        close(connection);
    }
}
