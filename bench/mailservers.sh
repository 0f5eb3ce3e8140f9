# Shell helpers the email benchmarks share (sourced by bench/email.sh and bench/lifecycle.sh).
# The caller defines `say` and a `PIDS` array; every process started here is added to it.

# start_dovecot DIR PORT: a Dovecot with one user (tester / secret123) and all state in DIR,
# listening on 127.0.0.1:PORT; returns once it accepts connections.
start_dovecot() {
    local dir=$1 port=$2
    mkdir -p "$dir/run" "$dir/state" "$dir/home"
    chown 65534:65534 "$dir/home"
    echo 'tester:{PLAIN}secret123' > "$dir/passwd"
    cat > "$dir/dovecot.conf" <<CONF
protocols = imap
listen = 127.0.0.1
base_dir = $dir/run
state_dir = $dir/state
log_path = $dir/dovecot.log
info_log_path = $dir/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $dir/passwd
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=$dir/home/%u
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $port
  }
  inet_listener imaps {
    port = 0
  }
}
CONF
    dovecot -F -c "$dir/dovecot.conf" & PIDS+=($!)
    for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && return 0; sleep 0.05; done
    say "dovecot did not start; log:"; cat "$dir/dovecot.log" >&2; return 1
}
