"""`meshagent tls ca create` and `meshagent tls cert create`: Consul's built-in CA for the server port.

File names and flags follow `consul tls`: `mesh-agent-ca.pem` / `mesh-agent-ca-key.pem`, then
`dc1-server-mesh-0.pem` / `dc1-server-mesh-0-key.pem` (the index grows so existing files are never replaced).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def tls() -> None:
    """Create a CA and certificates for TLS on the server port (:8300)."""


@tls.group()
def ca() -> None:
    """The certificate authority."""


@tls.group()
def cert() -> None:
    """Agent certificates signed by the CA."""


def _refuse_existing(*paths: Path) -> None:
    for path in paths:
        if path.exists():
            raise click.ClickException(f"{path} already exists")


@ca.command("create")
@click.option("-days", "--days", "days", type=click.IntRange(1, 36500), default=1825, show_default=True,
              help="Days the CA is valid.")
@click.option("-domain", "--domain", "domain", default="mesh", show_default=True,
              help="The agents' domain (certificates carry server.<dc>.<domain>).")
@click.option("-common-name", "--common-name", "common_name", default="", help="The CA's common name.")
@click.option("-name-constraint", "--name-constraint", "name_constraint", is_flag=True,
              help="Restrict the CA to <domain> and localhost names.")
@click.option("-additional-name-constraint", "--additional-name-constraint", "additional", multiple=True,
              help="Another permitted DNS name for the CA (repeatable; implies -name-constraint).")
def ca_create(days: int, domain: str, common_name: str, name_constraint: bool, additional: tuple[str, ...]) -> None:
    """Create a new CA: <domain>-agent-ca.pem and <domain>-agent-ca-key.pem in the current directory."""
    from meshagent.certs import new_ca, write_private

    domain = domain.strip(".")
    cert_path, key_path = Path(f"{domain}-agent-ca.pem"), Path(f"{domain}-agent-ca-key.pem")
    _refuse_existing(cert_path, key_path)
    constraints = [domain, "localhost", *additional] if name_constraint or additional else []
    authority = new_ca(days=days, domain=domain, common_name=common_name, name_constraints=constraints)
    cert_path.write_bytes(authority.cert_pem)
    click.echo(f"==> Saved {cert_path}")
    write_private(str(key_path), authority.key_pem)
    click.echo(f"==> Saved {key_path}")


@cert.command("create")
@click.option("-server", "--server", "server", is_flag=True, help="A server certificate (server.<dc>.<domain>).")
@click.option("-client", "--client", "client", is_flag=True, help="A client agent certificate.")
@click.option("-cli", "--cli", "cli_", is_flag=True, help="A certificate for the CLI (a client certificate).")
@click.option("-dc", "--dc", "dc", default="dc1", show_default=True, help="Datacenter.")
@click.option("-days", "--days", "days", type=click.IntRange(1, 36500), default=365, show_default=True,
              help="Days the certificate is valid.")
@click.option("-domain", "--domain", "domain", default="mesh", show_default=True, help="The agents' domain.")
@click.option("-ca", "--ca", "ca_file", default="#DOMAIN#-agent-ca.pem", show_default=True,
              help="The CA certificate.")
@click.option("-key", "--key", "key_file", default="#DOMAIN#-agent-ca-key.pem", show_default=True,
              help="The CA key.")
@click.option("-node", "--node", "node", default="", help="Also name <node>.server.<dc>.<domain> (servers).")
@click.option("-additional-dnsname", "--additional-dnsname", "dnsnames", multiple=True,
              help="Another DNS name in the certificate (repeatable).")
@click.option("-additional-ipaddress", "--additional-ipaddress", "ips", multiple=True,
              help="Another IP address in the certificate (repeatable).")
def cert_create(server: bool, client: bool, cli_: bool, dc: str, days: int, domain: str, ca_file: str,
                key_file: str, node: str, dnsnames: tuple[str, ...], ips: tuple[str, ...]) -> None:
    """Create <dc>-<server|client|cli>-<domain>-N.pem and its -key.pem, signed by the CA."""
    import ipaddress

    from meshagent.certs import issue, load_ca, write_private

    if sum((server, client, cli_)) != 1:
        raise click.UsageError("exactly one of -server, -client or -cli is needed")
    domain = domain.strip(".")
    ca_path = Path(ca_file.replace("#DOMAIN#", domain))
    ca_key_path = Path(key_file.replace("#DOMAIN#", domain))
    try:
        authority = load_ca(ca_path.read_bytes(), ca_key_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read the CA ({ca_path}, {ca_key_path}): {exc}") from exc
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise click.BadParameter(f"{ip!r} is not an IP address", param_hint="-additional-ipaddress") from exc
    kind = "server" if server else "client" if client else "cli"
    names = list(dnsnames)
    if server and node:
        names.insert(0, f"{node}.server.{dc}.{domain}")
    index = 0
    while Path(f"{dc}-{kind}-{domain}-{index}.pem").exists() or Path(f"{dc}-{kind}-{domain}-{index}-key.pem").exists():
        index += 1
    cert_path, key_path = Path(f"{dc}-{kind}-{domain}-{index}.pem"), Path(f"{dc}-{kind}-{domain}-{index}-key.pem")
    cert_pem, key_pem = issue(authority, "server" if server else "client", dc, domain=domain, days=days,
                              dns_names=names, ip_addresses=list(ips))
    assert key_pem is not None
    cert_path.write_bytes(cert_pem)
    click.echo(f"==> Using {ca_path} and {ca_key_path}")
    click.echo(f"==> Saved {cert_path}")
    write_private(str(key_path), key_pem)
    click.echo(f"==> Saved {key_path}")
