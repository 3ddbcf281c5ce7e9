"""Server-rendered pages (Jinja2 through aiohttp-jinja2, autoescaped) and the assets they use."""
