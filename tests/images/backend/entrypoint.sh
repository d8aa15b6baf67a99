#!/bin/sh
# Test backend: answers every HTTP request with the container's name.
#   PORT        port(s) to serve, comma- or space-separated (default 8080)
#   NAME        name put in every response (default: the hostname)
#   HEALTHY     "0" starts with /health failing (default 1)
#   STOP_DELAY  seconds to keep serving after SIGTERM (default 0), to model graceful shutdown
#   START_DELAY seconds to wait before listening (default 0), to model an app that opens its
#               port some time after its container started (connections are refused until then)
# Paths: any path -> 200 "<name>"; /health -> 200 while /www/health exists, else 503;
# /slow?N -> sleeps N seconds first; /status/CODE -> answers CODE; with /www/delay holding
# N, every path but /health waits N seconds first.
# busybox httpd cannot answer 200 on arbitrary paths (404 for missing files, CGI only under
# /cgi-bin/), so each connection is handed to handler.sh by `acceptor` (acceptor.c), which
# forks per connection as `nc -ll -e` does (a slow request never blocks the others) but
# listens with a server's backlog: busybox nc's backlog of 2 dropped the SYNs of a few
# simultaneous connects, and a dropped SYN is sent again only a second later.
PORT="${PORT:-8080}"
NAME="${NAME:-$(hostname)}"
export NAME

mkdir -p /www /tmp
if [ "${HEALTHY:-1}" != "0" ]; then
  touch /www/health
fi

on_term() {
  sleep "${STOP_DELAY:-0}"
  exit 0
}
# PID 1 ignores SIGTERM unless it traps it: without this, `docker stop` waits 10 s.
trap on_term TERM INT

# The app "boots": nothing listens yet. A SIGTERM meanwhile runs `on_term` once it is over.
sleep "${START_DELAY:-0}"

for port in $(echo "$PORT" | tr ',' ' '); do
  acceptor "$port" /handler.sh "$port" &
done
echo "backend $NAME serving on $PORT"
# `wait` returns early when a trapped signal arrives, so loop until told to stop.
while true; do
  wait
done
