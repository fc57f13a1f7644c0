# Sourced by scripts/demo and scripts/bench: a throwaway OpenLDAP in a temp dir, the same
# directory tests/harness/slapd.rs builds (Debian's slapd; modules back_mdb, ppolicy, pw-sha2;
# schemas core, cosine, inetorgperson, nis; an mdb database for dc=example,dc=com, durable:
# no dbnosync; a default password policy with pwdLockout: TRUE; ou=Policies, People, Groups,
# Disabled), served on a free loopback port.
#
#   free_port                     prints a free loopback TCP port
#   start_slapd WORK [MAP_BYTES]  builds and starts it in WORK (mdb map size, default 100 MiB);
#                                 sets base, admin, ldap_pw, ldap_port, slapd_pid and writes
#                                 WORK/ldap-password (mode 600, no newline). On failure it
#                                 prints slapd's output and returns 1. The caller kills
#                                 $slapd_pid (trap).

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$(( (RANDOM % 30000) + 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "no free port found" >&2; return 1
}

start_slapd() {
  local work=$1 map_size=${2:-104857600}
  if [ ! -x /usr/sbin/slapd ] || [ ! -x /usr/sbin/slapadd ]; then
    echo "slapd is not installed: apt-get install slapd ldap-utils (or run scripts/install-deps as root)" >&2
    return 1
  fi
  base="dc=example,dc=com"
  admin="cn=admin,$base"
  ldap_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  printf '%s' "$ldap_pw" > "$work/ldap-password"
  chmod 600 "$work/ldap-password"
  mkdir -p "$work/slapd.d" "$work/data"

  cat > "$work/config.ldif" <<LDIF
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: $work/slapd.pid

dn: cn=module{0},cn=config
objectClass: olcModuleList
cn: module{0}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: ppolicy
olcModuleLoad: pw-sha2

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif

include: file:///etc/ldap/schema/cosine.ldif

include: file:///etc/ldap/schema/inetorgperson.ldif

include: file:///etc/ldap/schema/nis.ldif

dn: olcDatabase={-1}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {-1}frontend

dn: olcDatabase={0}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {0}config
olcAccess: {0}to * by * none

dn: olcDatabase={1}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {1}mdb
olcSuffix: $base
olcRootDN: $admin
olcRootPW: $ldap_pw
olcDbDirectory: $work/data
olcDbMaxSize: $map_size
olcAccess: {0}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {1}to * by * read

dn: olcOverlay={0}ppolicy,olcDatabase={1}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {0}ppolicy
olcPPolicyDefault: cn=default,ou=Policies,$base
LDIF

  {
    printf 'dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n' "$base"
    for ou in Policies People Groups Disabled; do
      printf 'dn: ou=%s,%s\nobjectClass: organizationalUnit\nou: %s\n\n' "$ou" "$base" "$ou"
    done
    printf 'dn: cn=default,ou=Policies,%s\nobjectClass: organizationalRole\nobjectClass: pwdPolicy\ncn: default\npwdAttribute: userPassword\npwdLockout: TRUE\n\n' "$base"
  } > "$work/data.ldif"

  if ! /usr/sbin/slapadd -n0 -F "$work/slapd.d" -l "$work/config.ldif" >"$work/slapadd.log" 2>&1 ||
     ! /usr/sbin/slapadd -F "$work/slapd.d" -b "$base" -l "$work/data.ldif" >>"$work/slapadd.log" 2>&1; then
    echo "slapadd failed:" >&2; cat "$work/slapadd.log" >&2; return 1
  fi
  ldap_port=$(free_port) || return 1
  /usr/sbin/slapd -d 0 -h "ldap://127.0.0.1:$ldap_port/" -F "$work/slapd.d" >"$work/slapd.log" 2>&1 &
  slapd_pid=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$ldap_port") 2>/dev/null && return 0
    if ! kill -0 "$slapd_pid" 2>/dev/null; then
      echo "slapd exited at start:" >&2; cat "$work/slapd.log" >&2; slapd_pid=""; return 1
    fi
    sleep 0.1
  done
  echo "slapd does not listen on 127.0.0.1:$ldap_port after 10 s:" >&2; cat "$work/slapd.log" >&2
  return 1
}
