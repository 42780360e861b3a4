"""A TLS relay on asyncio and the standard library's ssl: floor.py's yardstick.

Not part of txschannel: what a Python user could write in half an hour
instead of ``twist schannel``. It accepts TLS on --listen, opens a plain
connection to --connect for each client, and copies 64 KiB reads both
ways, waiting for drain() after each write (flow control). With --uvloop,
the same code runs on uvloop's event loop::

    python benchmarks/asyncio_relay.py --listen 127.0.0.1:8443 \\
        --connect 127.0.0.1:8080 --certificate server.pem [--uvloop]
"""

import argparse
import asyncio
import ssl


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        # TLS cannot half-close: the peer sees the end of the stream as a close.
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except OSError:  # ssl.SSLError included: a reset or a broken TLS stream ends both ways
        writer.close()


async def main(arguments: argparse.Namespace) -> None:
    host, _, port = arguments.connect.rpartition(":")

    async def relay(client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        try:
            backend_reader, backend_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(pipe(client_reader, backend_writer),
                             pipe(backend_reader, client_writer))
        client_writer.close()
        backend_writer.close()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(arguments.certificate)
    address, _, listen_port = arguments.listen.rpartition(":")
    server = await asyncio.start_server(relay, address, int(listen_port), ssl=context,
                                        backlog=512)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT for TLS clients")
    parser.add_argument("--connect", required=True, help="HOST:PORT of the plain backend")
    parser.add_argument("--certificate", required=True, help="PEM file: key and certificate")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    arguments = parser.parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
