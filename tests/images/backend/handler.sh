#!/bin/sh
# Answers one HTTP/1.1 request on stdin/stdout, then closes the connection.
# $1: the port the connection came in on (reported as X-Server-Port).
CR="$(printf '\r')"
read -r method target version || exit 0
length=0
host=
while read -r line; do
  line="${line%"$CR"}"
  [ -z "$line" ] && break
  case "$line" in
    [Cc]ontent-[Ll]ength:*) length="${line#*:}"; length="${length# }" ;;
    [Hh]ost:*) host="${line#*:}"; host="${host# }" ;;
  esac
done
# Drain a request body so closing the socket does not reset the response.
case "$length" in
  '' | *[!0-9]*) length=0 ;;
esac
if [ "$length" -gt 0 ]; then
  head -c "$length" >/dev/null
fi

path="${target%%\?*}"
query=
case "$target" in
  *\?*) query="${target#*\?}" ;;
esac

status="200 OK"
body="$NAME"
# A replica made slow on purpose (`echo 2 > /www/delay`): every path but /health waits.
if [ -f /www/delay ] && [ "$path" != /health ]; then
  sleep "$(cat /www/delay)"
fi
case "$path" in
  /health)
    if [ -f /www/health ]; then
      body="$NAME healthy"
    else
      status="503 Service Unavailable"
      body="$NAME unhealthy"
    fi
    ;;
  /slow | /slow/*)
    case "$query" in
      '' | *[!0-9.]*) query=1 ;;
    esac
    sleep "$query"
    ;;
  /status/*)
    code="${path#/status/}"
    case "$code" in
      [1-5][0-9][0-9]) status="$code Test Status" ;;
    esac
    ;;
esac

# One printf, so one write: a replica killed mid-answer sends all of it or nothing (which a
# proxy can retry), never headers without their body.
payload=
if [ "$method" != "HEAD" ]; then
  payload="$body
"
fi
printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nX-Backend: %s\r\nX-Request-Host: %s\r\nX-Request-Path: %s\r\nX-Server-Port: %s\r\nConnection: close\r\n\r\n%s' \
  "$status" "$((${#body} + 1))" "$NAME" "$host" "$path" "${1:-}" "$payload"
