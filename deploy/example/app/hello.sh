#!/bin/sh
cat /app/message
echo "APP_MODE=${APP_MODE:-unset}"
