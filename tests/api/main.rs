mod bad_messages;
mod duplicates;
mod durability;
mod helpers;
mod http;
mod publish_command;
mod restart;
