"""The `email` handler: one message per event over SMTP (aiosmtplib), from a template."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from handlers import Context, Event, Permanent
from handlers.slack import render


class EmailOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = 587
    sender: str
    to: list[str] = Field(min_length=1)
    subject: str = "[hookline] {type} {job_id}{file_id}"
    template: str = "{type} from {source}\nevent {id}\njob {job_id} file {file_id}\n{error}"
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    use_tls: bool = False
    timeout: float = Field(default=30.0, gt=0)


class EmailHandler:
    name = "email"
    Options = EmailOptions

    async def handle(self, event: Event, ctx: Context[EmailOptions]) -> None:
        options = ctx.options
        message = EmailMessage()
        message["From"] = options.sender
        message["To"] = ", ".join(options.to)
        message["Subject"] = render(options.subject, event)
        message.set_content(render(options.template, event))
        try:
            await aiosmtplib.send(
                message,
                hostname=options.host,
                port=options.port,
                username=options.username,
                password=options.password.get_secret_value() if options.password else None,
                start_tls=options.starttls,
                use_tls=options.use_tls,
                timeout=options.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise Permanent(f"recipients refused: {list(exc.recipients)}") from None
